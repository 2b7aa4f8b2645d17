"""Import-time contract: light sub-packages do not load the heavy model libraries."""

import subprocess
import sys

import pytest


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    probe = f"import sys; {statement}; print(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    return [m for m in out.split(",") if m]


@pytest.mark.parametrize("statement", ["import cfmask.data", "import cfmask.masking"])
def test_light_packages_do_not_import_model_libraries(statement):
    loaded = _loaded_after(statement, ("open_clip", "timm", "cfmask.training.finetuner"))
    assert loaded == [], f"{statement!r} imported {loaded}"


def test_lazy_top_level_names_resolve_to_their_classes():
    import cfmask
    from cfmask.backbones import OpenCLIPViT, TimmViT
    from cfmask.backbones.openclip_vit import OpenCLIPViT as DirectOpenCLIP
    from cfmask.backbones.timm_vit import TimmViT as DirectTimm
    from cfmask.training.finetuner import CounterfactualFineTuner
    from cfmask.training.objective import CounterfactualObjective, ObjectiveResult

    assert cfmask.CounterfactualFineTuner is CounterfactualFineTuner
    assert cfmask.CounterfactualObjective is CounterfactualObjective
    assert cfmask.ObjectiveResult is ObjectiveResult
    assert TimmViT is DirectTimm and OpenCLIPViT is DirectOpenCLIP
    assert set(cfmask.__all__) <= set(dir(cfmask))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = cfmask.Nope


def test_cli_registers_the_adapters_for_short_names():
    loaded = _loaded_after(
        "from cfmask.cli import load_plugins; load_plugins()", ("open_clip", "timm")
    )
    assert loaded == ["open_clip", "timm"]


def test_datamodule_module_keeps_its_names():
    import cfmask.data
    import cfmask.data.datamodule as old
    from cfmask.data.roots import OODSet

    assert "OODSet" in old.__all__ and old.OODSet is OODSet
    for name in set(old.__all__) - {"OODSet"}:
        assert getattr(old, name) is getattr(cfmask.data, name), name


def test_clip_text_names_keep_their_adapter_import_paths():
    import cfmask.backbones.clip_text as clip_text
    import cfmask.backbones.openclip_vit as adapter

    assert adapter.default_templates is clip_text.default_templates
    assert adapter.encode_text_truncated is clip_text.encode_text_truncated
    assert "default_templates" in adapter.__all__
    # the zero-shot weights are built where the cache lives, not in the adapter
    assert not hasattr(adapter, "build_zero_shot_weights")


@pytest.mark.parametrize(
    "statement",
    [
        "import cfmask.evaluation.metrics",
        "import cfmask.evaluation.eval_sets",
        "import cfmask.backbones.heads",
    ],
)
def test_metric_and_head_modules_do_not_import_reporting_or_model_libraries(statement):
    loaded = _loaded_after(statement, ("rich", "open_clip", "timm", "cfmask.evaluation.reporting"))
    assert loaded == [], f"{statement!r} imported {loaded}"


def test_set_descriptions_and_reporting_keep_their_metrics_import_paths():
    import cfmask.data
    import cfmask.evaluation.eval_sets as eval_sets
    import cfmask.evaluation.metrics as metrics
    import cfmask.evaluation.reporting as reporting
    from cfmask.evaluation.metrics import results_table, write_results

    assert metrics.EvalSet is eval_sets.EvalSet is cfmask.data.EvalSet
    assert metrics.describe_test_sets is eval_sets.describe_test_sets
    assert results_table is reporting.results_table is cfmask.data.results_table
    assert write_results is reporting.write_results is cfmask.data.write_results
    assert isinstance(eval_sets.EvalSet("a", num_classes=4).metric(), metrics.SubsetAccuracy)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = metrics.Nope

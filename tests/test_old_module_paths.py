"""Module paths from before the layer sub-packages still import, with a deprecation warning."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.cli import instantiate_class

from cfmask._compat import MOVED_MODULES
from cfmask.training.callbacks import MaskQualityMonitor

REFERENCE = Path(__file__).resolve().parent / "reference"


def _fresh_import(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_MODULES.items()))
def test_old_path_is_the_new_module_and_warns_with_the_new_path(old, new, monkeypatch):
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated.*import {new} instead"):
        module = _fresh_import(old, monkeypatch)
    assert module is importlib.import_module(new)
    assert module.__name__ == new and module.__spec__.name == new


def test_every_old_path_points_at_an_existing_module_and_no_flat_file_is_left():
    package = Path(importlib.import_module("cfmask").__file__).parent
    for old, new in MOVED_MODULES.items():
        assert importlib.util.find_spec(new) is not None, new
        assert not (package / f"{old.rpartition('.')[2]}.py").exists(), old


def test_old_class_path_in_a_config_builds_the_new_class(monkeypatch):
    monkeypatch.delitem(sys.modules, "cfmask.callbacks", raising=False)
    with pytest.warns(DeprecationWarning, match="import cfmask.training.callbacks instead"):
        callback = instantiate_class(
            (),
            {
                "class_path": "cfmask.callbacks.MaskQualityMonitor",
                "init_args": {"thresholds": [0.5]},
            },
        )
    assert type(callback) is MaskQualityMonitor and list(callback.maskers) == [0.5]


def test_legacy_checkpoint_loads_through_the_old_fine_tuner_path(monkeypatch):
    with pytest.warns(DeprecationWarning, match="import cfmask.training.finetuner instead"):
        old = _fresh_import("cfmask.finetuner", monkeypatch)
    model = old.CounterfactualFineTuner.load_from_checkpoint(REFERENCE / "legacy_tiny.ckpt")
    stored = torch.load(REFERENCE / "legacy_tiny_outputs.pt", weights_only=True)["logits"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(21))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), stored, rtol=0, atol=1e-6)


def test_public_names_and_unmoved_packages_import_without_a_warning(recwarn):
    import cfmask
    import cfmask.backbones
    import cfmask.cli
    import cfmask.data
    import cfmask.losses
    import cfmask.masking

    assert cfmask.CounterfactualFineTuner.__module__ == "cfmask.training.finetuner"
    assert cfmask.losses.FeatureDistillationLoss is cfmask.FeatureDistillationLoss
    assert callable(cfmask.cli.main) and cfmask.masking.ObjectMasker and cfmask.data.EvalSet
    assert cfmask.backbones.TimmViT.__module__ == "cfmask.backbones.timm_vit"
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]

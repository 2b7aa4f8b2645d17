"""``--ckpt_path`` never silently replaces the configuration of a CLI run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfmask import cli
from cfmask.cli import CheckpointConfigConflict, main, reconcile_model_config

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "tiny_fit.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fit")
    main(["fit", "-c", TINY, f"--trainer.default_root_dir={root}"])
    return next(root.rglob("last.ckpt"))


@pytest.fixture
def built_models(monkeypatch) -> list:
    models: list = []
    original = cli.CfmaskCLI.after_instantiate_classes

    def record(self):
        models.append(self.model)
        original(self)

    monkeypatch.setattr(cli.CfmaskCLI, "after_instantiate_classes", record)
    return models


def _test_with_another_threshold(ckpt_path: str, root: Path) -> None:
    """``cfmask test`` from ``ckpt_path`` with a masker threshold the checkpoint lacks."""
    with pytest.warns(
        UserWarning,
        match=r"model\.masker\.init_args\.threshold: checkpoint 0\.3, configuration 0\.9",
    ):
        main(
            [
                "test", "-c", TINY, f"--trainer.default_root_dir={root}",
                "--model.masker.init_args.threshold=0.9", f"--ckpt_path={ckpt_path}",
            ]
        )  # fmt: skip


def test_explicit_flag_is_kept_and_the_difference_is_listed(trained, tmp_path, built_models):
    _test_with_another_threshold(str(trained), tmp_path)
    assert built_models[0].masker.threshold == 0.9


def test_remote_checkpoint_is_reconciled_too(trained, tmp_path, built_models, monkeypatch):
    import shutil

    from .helpers.loopback import serve_directory

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(trained, www / "run.ckpt")
    with serve_directory(www) as base:
        _test_with_another_threshold(f"{base}/run.ckpt", tmp_path)
    assert built_models[0].masker.threshold == 0.9


def test_other_backbone_is_an_error(trained, tmp_path):
    with pytest.raises(
        CheckpointConfigConflict,
        match=r"model\.backbone\.init_args\.model_kwargs\.depth: checkpoint 2, configuration 1",
    ):
        main(
            [
                "test", "-c", TINY, f"--trainer.default_root_dir={tmp_path}",
                "--model.backbone.init_args.model_kwargs={depth: 1, embed_dim: 32, num_heads: 2}",
                f"--ckpt_path={trained}",
            ]
        )  # fmt: skip


def test_resume_with_other_arguments_is_an_error(trained, tmp_path):
    with pytest.raises(
        CheckpointConfigConflict, match=r"model\.lr: checkpoint 0\.001, configuration 0\.01"
    ):
        main(
            [
                "fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}", "--model.lr=0.01",
                f"--ckpt_path={trained}",
            ]
        )  # fmt: skip


def test_arguments_left_at_their_defaults_come_from_the_checkpoint(trained, tmp_path, built_models):
    main(
        [
            "test", "-c", TINY, f"--trainer.default_root_dir={tmp_path}",
            "--model.masker=null", "--model.lr=3e-5", f"--ckpt_path={trained}",
        ]
    )  # fmt: skip
    model = built_models[0]
    assert type(model.masker).__name__ == "ObjectMasker" and model.masker.threshold == 0.3
    assert model.hparams["lr"] == 1e-3


def test_same_configuration_resumes_without_a_word(trained, tmp_path, recwarn):
    main(
        [
            "fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=3",
            f"--ckpt_path={trained}",
        ]
    )  # fmt: skip
    assert not [w for w in recwarn if "other model arguments" in str(w.message)]


def test_reconcile_ignores_memory_only_backbone_options():
    bb = {"class_path": "TimmViT", "init_args": {"model_name": "m", "grad_checkpointing": False}}
    on = {"class_path": "TimmViT", "init_args": {"model_name": "m", "grad_checkpointing": True}}
    assert reconcile_model_config({"backbone": on}, {"backbone": bb}, {}) == ([], {})

"""No checkpoint, local or served over HTTP, runs code when cfmask loads it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.cli import main
from cfmask.data.synthetic import SyntheticDataModule
from cfmask.testing import quiet_trainer, tiny_timm_args
from cfmask.training.checkpoints import SafeCheckpointIO, UnsafeCheckpointError

from .helpers.loopback import serve_directory

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "tiny_fit.yaml")


class _Payload:
    """Pickles as a call to ``os.makedirs(marker)``: proof that code ran on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.makedirs, (str(self.marker),))


def _write_malicious_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"state_dict": {}, "hyper_parameters": {}, "evil": _Payload(marker)}, path)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A malicious ``evil.ckpt`` served on 127.0.0.1; yields (url, marker path)."""
    www = tmp_path / "www"
    www.mkdir()
    marker = tmp_path / "PAYLOAD_RAN"
    _write_malicious_checkpoint(www / "evil.ckpt", marker)
    with serve_directory(www) as base:
        yield f"{base}/evil.ckpt", marker


@pytest.fixture(autouse=True)
def _private_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.hub caches downloaded checkpoints; keep them out of the user's cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def _tiny_model() -> CounterfactualFineTuner:
    backbone = TimmViT(**tiny_timm_args(depth=1))
    return CounterfactualFineTuner(backbone, distillation=[], lr=1e-3, warmup_steps=1)


def test_load_from_checkpoint_url_runs_nothing(served):
    url, marker = served
    with pytest.raises(UnsafeCheckpointError, match="refused to load the checkpoint"):
        CounterfactualFineTuner.load_from_checkpoint(url)
    assert not marker.exists()


def test_load_from_checkpoint_refuses_weights_only_false(served):
    url, marker = served
    with pytest.raises(ValueError, match="weights_only=True only"):
        CounterfactualFineTuner.load_from_checkpoint(url, weights_only=False)
    assert not marker.exists()


@pytest.mark.parametrize("stage", ["fit", "validate", "test"])
def test_trainer_ckpt_path_url_runs_nothing(served, tmp_path, stage):
    url, marker = served
    trainer = quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    data = SyntheticDataModule(num_classes=3, image_size=32, batch_size=4, train_size=8)
    with pytest.raises(UnsafeCheckpointError):
        getattr(trainer, stage)(_tiny_model(), datamodule=data, ckpt_path=url)
    assert not marker.exists()
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_trainer_refuses_weights_only_false(served, tmp_path):
    url, marker = served
    trainer = quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    data = SyntheticDataModule(num_classes=3, image_size=32, batch_size=4, train_size=8)
    with pytest.raises(ValueError, match="weights_only=True only"):
        trainer.fit(_tiny_model(), datamodule=data, ckpt_path=url, weights_only=False)
    assert not marker.exists()


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_cli_ckpt_path_url_runs_nothing(served, tmp_path, subcommand):
    url, marker = served
    with pytest.raises(UnsafeCheckpointError):
        main(
            [subcommand, "-c", TINY, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={url}"]
        )
    assert not marker.exists()


def test_local_malicious_files_run_nothing_on_every_loader(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil.ckpt"
    _write_malicious_checkpoint(evil, marker)
    with pytest.raises(UnsafeCheckpointError):
        CounterfactualFineTuner.load_from_checkpoint(evil)
    backbone_args = tiny_timm_args(depth=1)
    with pytest.raises(ValueError, match="weights_only=True"):  # backbone weights file
        TimmViT(**backbone_args, pretrained=str(evil))
    with pytest.raises(ValueError, match="weights_only=True"):  # init weights
        CounterfactualFineTuner(TimmViT(**backbone_args), init_weights=str(evil))
    from cfmask.losses import FeatureDistillationLoss

    with pytest.raises(ValueError, match="weights_only=True"):  # a teacher checkpoint
        CounterfactualFineTuner(
            TimmViT(**backbone_args), distillation=[FeatureDistillationLoss(teacher=str(evil))]
        )
    with pytest.raises(UnsafeCheckpointError):
        main(["test", "-c", TINY, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={evil}"])
    assert not marker.exists()


def test_safe_io_still_reads_our_own_checkpoints(tmp_path):
    data = SyntheticDataModule(num_classes=3, image_size=32, batch_size=4, train_size=8)
    trainer = quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    model = _tiny_model()
    trainer.fit(model, datamodule=data)
    path = tmp_path / "ok.ckpt"
    trainer.save_checkpoint(path)
    again = quiet_trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    again.fit(_tiny_model(), datamodule=data, ckpt_path=path)
    assert again.global_step == 2
    restored = CounterfactualFineTuner.load_from_checkpoint(path)
    for key, value in model.student.state_dict().items():
        assert torch.equal(restored.student.state_dict()[key], value)


def test_malicious_open_clip_weights_file_runs_nothing(tmp_path, clip_args):
    from cfmask.backbones import OpenCLIPViT

    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil.pt"
    _write_malicious_checkpoint(evil, marker)
    with pytest.raises(Exception, match=r"(?i)weights.only"):
        OpenCLIPViT(**clip_args, pretrained=str(evil))
    assert not marker.exists()

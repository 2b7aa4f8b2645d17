"""Which checkpoint file holds which step: ``last.ckpt`` is always the last step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cfmask.cli import main
from cfmask.training.finetuner import CounterfactualFineTuner

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "tiny_fit.yaml")
# tiny_fit.yaml: 8 training images in batches of 4, so 2 steps per epoch.
THREE_EPOCHS = ["--trainer.max_steps=-1", "--trainer.max_epochs=3"]


def _scripted_validation(scores: list[float]):
    def validation_step(self, batch, batch_idx):  # val/acc1 falls after the first epoch
        self.log("val/acc1", scores[self.current_epoch])

    return validation_step


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])


def test_last_ckpt_holds_the_final_step_when_validation_stops_improving(tmp_path, monkeypatch):
    monkeypatch.setattr(
        CounterfactualFineTuner, "validation_step", _scripted_validation([0.9, 0.5, 0.1])
    )
    main(["fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}", *THREE_EPOCHS])
    files = {p.name: p for p in tmp_path.rglob("*.ckpt")}
    assert _step(files["last.ckpt"]) == 6
    best = [name for name in files if name.startswith("best-")]
    assert best == ["best-epoch=0-step=2.ckpt"]
    assert _step(files[best[0]]) == 2


def test_step_triggered_saves_update_last_and_are_never_named_best(tmp_path, monkeypatch):
    monkeypatch.setattr(
        CounterfactualFineTuner, "validation_step", _scripted_validation([0.9, 0.5, 0.1])
    )
    seen: list[tuple[int, int]] = []

    def record(self, trainer, pl_module, batch, batch_idx):
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        if last.exists():
            seen.append((trainer.global_step, _step(last)))

    from lightning.pytorch.callbacks import Callback

    class Recorder(Callback):
        on_train_batch_start = record

    monkeypatch.setattr("cfmask.cli._results_report", lambda: Recorder())
    main(
        [
            "fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}", *THREE_EPOCHS,
            "--checkpoint.every_n_train_steps=1",
        ]
    )  # fmt: skip
    names = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert names == ["best-epoch=0-step=2.ckpt", "last.ckpt"]
    # At the start of each step, last.ckpt already holds every step completed so far.
    assert seen == [(s, s) for s in range(1, 6)]
    assert _step(next(tmp_path.rglob("last.ckpt"))) == 6


def test_exception_checkpoint_is_named_interrupted(tmp_path, monkeypatch):
    original = CounterfactualFineTuner.training_step

    def failing_step(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("simulated failure at step 3")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CounterfactualFineTuner, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="simulated failure"):
        main(
            [
                "fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}", *THREE_EPOCHS,
                "--checkpoint.save_on_exception=true",
            ]
        )  # fmt: skip
    names = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert "interrupted-epoch=1-step=3.ckpt" in names
    assert all(not n.startswith("best-") or n == "best-epoch=0-step=2.ckpt" for n in names)


def test_linked_last_never_points_at_a_stale_best(tmp_path, monkeypatch):
    monkeypatch.setattr(
        CounterfactualFineTuner, "validation_step", _scripted_validation([0.9, 0.5, 0.1])
    )
    main(
        [
            "fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}", *THREE_EPOCHS,
            "--checkpoint.save_last=link",
        ]
    )  # fmt: skip
    files = {p.name: p for p in tmp_path.rglob("*.ckpt")}
    assert _step(files["last.ckpt"]) == 6
    assert _step(files["best-epoch=0-step=2.ckpt"]) == 2


def test_without_a_monitor_nothing_is_named_best(tmp_path):
    main(["fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}", "--checkpoint.monitor=null"])
    names = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert names == ["epoch=0-step=2.ckpt", "last.ckpt"]

"""A run interrupted inside an epoch and resumed ends with bit-identical weights (CPU)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.data.synthetic import SyntheticDataModule
from cfmask.masking import RandomMasker, SingleImageRefiller
from cfmask.testing import quiet_trainer, tiny_timm_args
from cfmask.training.checkpoints import LastAndBestCheckpoint

STEPS_PER_EPOCH = 3  # 12 training images in batches of 4


class _FailAt(pl.Callback):
    """Simulate a crash when step ``step`` is about to run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash before step {self.step}")


def _synthetic() -> pl.LightningDataModule:
    return SyntheticDataModule(
        num_classes=3, image_size=32, batch_size=4, train_size=12, val_size=8, test_size=4
    )


def _fit(
    root: Path,
    fail_at: int | None = None,
    ckpt_path: Path | None = None,
    data_factory=_synthetic,
    max_epochs: int = 3,
    every_n_train_steps: int | None = 1,
):
    pl.seed_everything(0)
    backbone = TimmViT(**tiny_timm_args(depth=1, drop_rate=0.1))
    model = CounterfactualFineTuner(
        backbone, masker=RandomMasker(ratio=0.5), refiller=SingleImageRefiller(),
        lr=1e-3, warmup_steps=2,
    )  # fmt: skip
    data = data_factory()
    callbacks: list[pl.Callback] = [
        LastAndBestCheckpoint(
            dirpath=root, monitor="val/acc1", mode="max", save_last=True,
            every_n_train_steps=every_n_train_steps, filename="best-{epoch}-{step}",
        )
    ]  # fmt: skip
    if fail_at is not None:
        callbacks.append(_FailAt(fail_at))
    trainer = quiet_trainer(
        root, max_epochs=max_epochs, callbacks=callbacks, num_sanity_val_steps=1,
        limit_val_batches=1.0,
    )  # fmt: skip
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    model, trainer = _fit(tmp_path_factory.mktemp("full"))
    assert trainer.global_step == 3 * STEPS_PER_EPOCH
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("crash_step", "every_n_train_steps"),
    [(4, 1), (3, 1), (4, None)],
    ids=["inside-epoch", "epoch-boundary", "after-validation"],
)
def test_resumed_run_matches_the_uninterrupted_one_bit_for_bit(
    uninterrupted, tmp_path, crash_step, every_n_train_steps
):
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path, fail_at=crash_step, every_n_train_steps=every_n_train_steps)
    last = tmp_path / "last.ckpt"
    saved_at = torch.load(last, weights_only=True)["global_step"]
    # With a save every step, last.ckpt holds the crash step; otherwise the epoch end.
    assert saved_at == (crash_step if every_n_train_steps else STEPS_PER_EPOCH)
    model, trainer = _fit(tmp_path, ckpt_path=last, every_n_train_steps=every_n_train_steps)
    assert trainer.global_step == 3 * STEPS_PER_EPOCH
    resumed = model.state_dict()
    assert resumed.keys() == uninterrupted.keys()
    different = [k for k, v in uninterrupted.items() if not torch.equal(v, resumed[k])]
    assert different == []


def test_folder_data_with_augmentation_resumes_bit_for_bit(tmp_path_factory):
    from cfmask.data import ImageFolderDataModule

    from .data._fake_trees import write_image

    root = tmp_path_factory.mktemp("images")
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        for i in range(8):
            write_image(root / f"class{c}" / f"{i}.png", size=(40, 36), color=colour)

    def folders() -> pl.LightningDataModule:
        return ImageFolderDataModule(
            root=str(root), val_size=3, test_size=3, batch_size=4, num_workers=0,
            image_size=32, augment=True,
        )  # fmt: skip

    full, _ = _fit(tmp_path_factory.mktemp("full"), data_factory=folders, max_epochs=2)
    crashed = tmp_path_factory.mktemp("crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(crashed, fail_at=6, data_factory=folders, max_epochs=2)  # 4 steps per epoch
    resumed, trainer = _fit(
        crashed, ckpt_path=crashed / "last.ckpt", data_factory=folders, max_epochs=2
    )
    assert trainer.global_step == 8
    expected = full.state_dict()
    different = [k for k, v in resumed.state_dict().items() if not torch.equal(v, expected[k])]
    assert different == []


ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "tiny_fit.yaml")


def _read_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
    except Exception:  # not written yet, or being replaced
        return None


@pytest.mark.slow
def test_cli_fit_killed_inside_an_epoch_resumes_bit_for_bit(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from cfmask.cli import main

    args = [
        "fit", "-c", TINY, "--trainer.max_steps=-1", "--trainer.max_epochs=3",
        "--checkpoint.every_n_train_steps=1", "--data.init_args.train_size=16",
    ]  # 4 steps per epoch, 12 in all  # fmt: skip
    full = tmp_path / "full"
    main([*args, f"--trainer.default_root_dir={full}"])
    crashed = tmp_path / "crashed"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "helpers")]),
        "OMP_NUM_THREADS": "1",  # the same kernels as this process (one thread)
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfmask", *args, f"--trainer.default_root_dir={crashed}",
         "--trainer.callbacks+=slow_steps.SlowSteps"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    last = crashed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        step = _read_step(last)
        if step is not None and step > 4 and step % 4 != 0:  # inside the second epoch
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run ended before it could be killed inside an epoch"
    step = _read_step(last)
    assert step is not None and step % 4 != 0
    main([*args, f"--trainer.default_root_dir={crashed}", f"--ckpt_path={last}"])
    expected = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == expected["global_step"] == 12
    state, want = resumed["state_dict"], expected["state_dict"]
    assert state.keys() == want.keys()
    assert [k for k in want if not torch.equal(state[k], want[k])] == []

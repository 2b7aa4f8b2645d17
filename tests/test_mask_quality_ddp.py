"""MaskQualityMonitor under a 2-process DDP fit on the CPU: the logged averages pool both ranks.

Each rank measures its own half of every batch; the logged value must be the sums of
both ranks divided by the total image count, recomputed here from what each rank
wrote to disk.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from .helpers.ddp_script import run_script

_SCRIPT = textwrap.dedent(
    """
    import sys

    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from cfmask.backbones.timm_vit import TimmViT
    from cfmask.training.callbacks import MaskQualityMonitor
    from cfmask.training.finetuner import CounterfactualFineTuner
    from cfmask.masking import RandomMasker
    from cfmask.testing import quiet_trainer, tiny_timm_args

    out = sys.argv[1]
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 32, 32, generator=gen)
    targets = torch.arange(16) % 3
    masks = torch.zeros(16, 32, 32, dtype=torch.bool)
    for i in range(16):  # objects of different sizes, so the ranks measure different rates
        masks[i, : 8 + i, : 8 + i] = True

    pl.seed_everything(0)
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_args()), masker=RandomMasker(0.5))
    monitor = MaskQualityMonitor(thresholds=(0.4, 0.6))
    trainer = quiet_trainer(
        out,
        max_epochs=1,
        devices=2,
        strategy="ddp",
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[monitor],
    )
    loader = DataLoader(TensorDataset(images, targets, masks), batch_size=4)
    trainer.fit(model, train_dataloaders=loader)
    rank = trainer.global_rank
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if "mask_quality" in k}
    torch.save((monitor.sums, monitor.count, logged), f"{out}/rank_{rank}.pt")
    """
)


@pytest.mark.slow
def test_logged_mask_quality_pools_both_ranks(tmp_path: Path) -> None:
    run_script(_SCRIPT, tmp_path)
    (sums0, n0, logged), (sums1, n1, _) = (torch.load(tmp_path / f"rank_{r}.pt") for r in (0, 1))
    assert n0 == n1 == 8  # each rank measured its own 8 of the 16 images
    assert not torch.equal(sums0, sums1)
    pooled = (sums0 + sums1) / (n0 + n1)
    for row, t in enumerate(("0.4", "0.6")):
        for col, name in enumerate(("image_mr", "object_mr", "iou")):
            value = logged[f"mask_quality/t={t}/{name}"]
            assert value == pytest.approx(float(pooled[row, col]), rel=1e-5)

"""Mixed precision: bf16 fit steps on the CPU, relevance under bf16 autocast, fp16 on a GPU."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from cfmask.backbones.timm_vit import TimmViT
from cfmask.data.synthetic import SyntheticDataModule
from cfmask.masking.maskers import ObjectMasker
from cfmask.masking.refillers import SingleImageRefiller
from cfmask.relevance.attention import AttentionGradRelevance
from cfmask.testing import quiet_trainer, tiny_timm_args
from cfmask.training.finetuner import CounterfactualFineTuner


def test_bf16_mixed_fit_step_on_cpu(tiny_timm_config: dict[str, Any], tmp_path: Path) -> None:
    model = CounterfactualFineTuner(
        TimmViT(**tiny_timm_config),
        masker=ObjectMasker(0.3),
        refiller=SingleImageRefiller(),
        lr=1e-3,
        schedule="constant",
    )
    before = copy.deepcopy(model.student.state_dict())
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            losses.append(float(trainer.callback_metrics["train/loss"]))

    trainer = quiet_trainer(
        tmp_path,
        max_steps=1,
        precision="bf16-mixed",
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[Record()],
    )
    trainer.fit(model, datamodule=SyntheticDataModule(batch_size=4, train_size=8))
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    state = model.student.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in state.items())  # fp32 master weights
    assert any(not torch.equal(v, before[k]) for k, v in state.items())


def test_relevance_under_bf16_autocast_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    vit = TimmViT(**tiny_timm_args(10, img_size=64, depth=12, embed_dim=96, num_heads=3))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 64, 64, generator=gen), torch.arange(8)
    relevance = AttentionGradRelevance()
    fp32 = relevance(vit, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = relevance(vit, x, y).float()
        shared = relevance.forward_with_outputs(vit, x, y)
    assert torch.isfinite(bf16).all() and bf16.amax(1).allclose(torch.ones(8), atol=1e-2)
    # bf16 keeps 8 mantissa bits; the map moves by about a percent of its range at most
    assert float((bf16 - fp32).abs().max()) < 0.05
    assert float((bf16 - fp32).abs().mean()) < 0.01
    torch.testing.assert_close(shared.scores.float(), bf16)
    masks_agree = ((fp32 > 0.3) == (bf16 > 0.3)).float().mean()
    assert float(masks_agree) > 0.97


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_fit_step_on_gpu(
    precision: str, tiny_timm_config: dict[str, Any], tmp_path: Path
) -> None:
    model = CounterfactualFineTuner(
        TimmViT(**tiny_timm_config), masker=ObjectMasker(0.3), lr=1e-3, schedule="constant"
    )
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    trainer = quiet_trainer(
        tmp_path,
        max_steps=2,
        accelerator="gpu",
        precision=precision,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=SyntheticDataModule(batch_size=4, train_size=8))
    state = {k: v.cpu() for k, v in model.student.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in state.values())
    assert any(not torch.equal(v, before[k]) for k, v in state.items())

"""Explicit attention (the path attention probes need) computes what fused attention does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cfmask.backbones.timm_vit import TimmViT

from ..helpers.model_inputs import assert_same_loss_and_grads, fixed_batch, perturb, tiny_clip


@pytest.mark.parametrize("kind", ["timm", "clip"])
def test_explicit_attention_matches_fused(
    kind: str, tiny_timm_config: dict[str, Any], tmp_path: Path
) -> None:
    vit = TimmViT(**tiny_timm_config) if kind == "timm" else tiny_clip(tmp_path)
    perturb(vit, seed=5)
    x, y = fixed_batch(seed=3)
    outs = []
    for fused in (True, False):
        vit.set_fused_attention(fused)
        logits = vit(x)
        loss = F.cross_entropy(logits, y)
        outs.append((loss.detach(), list(torch.autograd.grad(loss, list(vit.parameters())))))
    assert_same_loss_and_grads(outs[0], outs[1])
    # probes leave the explicit setting as they found it
    with vit.attention_probes() as probes:
        vit(x)
    assert len(probes) == 2
    if isinstance(vit, TimmViT):
        assert all(not blk.attn.fused_attn for blk in vit.model.blocks)
    else:
        assert all("attention" in blk.__dict__ for blk in vit.visual.transformer.resblocks)
    vit.set_fused_attention(True)
    if isinstance(vit, TimmViT):
        assert all(blk.attn.fused_attn for blk in vit.model.blocks)
    else:
        assert all("attention" not in blk.__dict__ for blk in vit.visual.transformer.resblocks)

"""AttentionGradRelevance(last_blocks=k): the rollout over the last k blocks only."""

from __future__ import annotations

import pytest
import torch

from cfmask.backbones import TimmViT
from cfmask.relevance import AttentionGradRelevance


def _vit(timm_args):
    torch.manual_seed(0)
    return TimmViT(**timm_args).eval()


def test_last_block_only_matches_a_hand_computation(timm_args):
    vit = _vit(timm_args)
    x = torch.rand(3, 3, 32, 32)
    y = torch.tensor([0, 4, 9])
    scores = AttentionGradRelevance(last_blocks=1)(vit, x, y)

    # By hand: with one block, R = I + A_bar, so the CLS row over patches is A_bar[0, 1:],
    # A_bar = mean over heads of clamp(dy/dA * A, min=0) for the last block's probabilities.
    captured = []
    last_drop = vit.model.blocks[-1].attn.attn_drop
    handle = last_drop.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    flags = [b.attn.fused_attn for b in vit.model.blocks]
    for b in vit.model.blocks:
        b.attn.fused_attn = False
    try:
        logits = vit(x)
        attn = captured[0]
        grad = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), attn)[0]
    finally:
        handle.remove()
        for b, f in zip(vit.model.blocks, flags, strict=True):
            b.attn.fused_attn = f
    a_bar = (grad * attn).clamp(min=0).mean(dim=1)
    cam = a_bar[:, 0, 1:]
    expected = cam / (cam.amax(dim=1, keepdim=True) + 1e-8)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)


def test_last_blocks_equal_to_depth_is_the_full_rollout(timm_args):
    vit = _vit(timm_args)
    x = torch.rand(2, 3, 32, 32)
    y = torch.tensor([1, 2])
    full = AttentionGradRelevance()(vit, x, y)
    torch.testing.assert_close(AttentionGradRelevance(last_blocks=2)(vit, x, y), full)
    assert not torch.allclose(AttentionGradRelevance(last_blocks=1)(vit, x, y), full)


def test_shared_pass_honours_last_blocks(timm_args):
    vit = _vit(timm_args)
    x = torch.rand(2, 3, 32, 32)
    y = torch.tensor([1, 2])
    rel = AttentionGradRelevance(last_blocks=1)
    shared = rel.forward_with_outputs(vit, x, y)
    torch.testing.assert_close(shared.scores, rel(vit, x, y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_bad_last_blocks(bad):
    with pytest.raises(ValueError, match="last_blocks must be a positive number"):
        AttentionGradRelevance(last_blocks=bad)


def test_more_blocks_than_the_model_has(timm_args):
    with pytest.raises(ValueError, match="only 2 blocks"):
        AttentionGradRelevance(last_blocks=3)(
            _vit(timm_args), torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
        )

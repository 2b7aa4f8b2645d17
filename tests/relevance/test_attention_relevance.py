"""AttentionGradRelevance / AttentionRolloutRelevance against independent oracles.

The oracles recompute the forward pass by hand from the block weights, take the
gradient of the summed ground-truth logits with respect to hand-made attention
probabilities, and run the relevance rules with explicit Python loops.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cfmask.backbones import OpenCLIPViT, TimmViT
from cfmask.relevance import AttentionGradRelevance, AttentionRolloutRelevance, RelevanceMap


def _softmax_attention(q: Tensor, k: Tensor) -> Tensor:
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _timm_manual(vit: TimmViT, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    m = vit.model
    x = (images - vit.mean_buffer) / vit.std_buffer
    x = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
    x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + m.pos_embed
    attns = []
    for blk in m.blocks:
        h = blk.attn.num_heads
        q, k, v = F.linear(blk.norm1(x), blk.attn.qkv.weight, blk.attn.qkv.bias).chunk(3, dim=-1)
        a = _softmax_attention(_split_heads(q, h), _split_heads(k, h))
        attns.append(a)
        o = (a @ _split_heads(v, h)).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(o, blk.attn.proj.weight, blk.attn.proj.bias)
        x = x + blk.mlp(blk.norm2(x))
    return m.head(m.norm(x)[:, 0]), attns


def _clip_manual(vit: OpenCLIPViT, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    v = vit.visual
    x = (images - vit.mean_buffer) / vit.std_buffer
    x = v.conv1(x).flatten(2).transpose(1, 2)
    x = v.ln_pre(
        torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    )
    attns = []
    for blk in v.transformer.resblocks:
        h = blk.attn.num_heads
        q, k, val = F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(
            3, -1
        )
        a = _softmax_attention(_split_heads(q, h), _split_heads(k, h))
        attns.append(a)
        o = (a @ _split_heads(val, h)).transpose(1, 2).reshape(x.shape)
        x = x + blk.attn.out_proj(o)
        x = x + blk.mlp(blk.ln_2(x))
    feats = v.ln_post(x[:, 0]) @ v.proj
    return F.linear(F.normalize(feats, dim=-1), vit.head.weight, vit.head.bias), attns


def _oracle_grad_cam(logits: Tensor, attns: list[Tensor], targets: Tensor) -> Tensor:
    score = sum(logits[i, int(targets[i])] for i in range(len(targets)))
    grads = torch.autograd.grad(score, attns)
    b, heads, t, _ = attns[0].shape
    rows = []
    for i in range(b):
        rel = torch.eye(t)
        for a, g in zip(attns, grads, strict=True):
            mean = torch.zeros(t, t)
            for h in range(heads):
                mean += torch.clamp(g[i, h] * a[i, h], min=0)
            rel = rel + (mean / heads) @ rel
        cam = rel[0, 1:]
        rows.append(cam / (cam.max() + 1e-8))
    return torch.stack(rows).detach()


def _oracle_rollout(attns: list[Tensor]) -> Tensor:
    b, _, t, _ = attns[0].shape
    rows = []
    for i in range(b):
        rel = torch.eye(t)
        for a in attns:
            mean = a[i].mean(0)
            mean = mean / mean.sum(-1, keepdim=True)
            rel = (0.5 * torch.eye(t) + 0.5 * mean) @ rel
        cam = rel[0, 1:]
        rows.append(cam / (cam.max() + 1e-8))
    return torch.stack(rows).detach()


@pytest.fixture
def timm_vit(timm_args: dict[str, Any]) -> TimmViT:
    return TimmViT(**timm_args)


@pytest.fixture
def clip_vit(clip_args: dict[str, Any]) -> OpenCLIPViT:
    return OpenCLIPViT(**clip_args)


def test_grad_relevance_matches_oracle_timm(timm_vit: TimmViT) -> None:
    images, targets = torch.rand(3, 3, 32, 32), torch.tensor([0, 4, 9])
    scores = AttentionGradRelevance()(timm_vit, images, targets)
    expected = _oracle_grad_cam(*_timm_manual(timm_vit, images), targets)
    assert scores.shape == (3, 16)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert torch.allclose(scores.amax(1), torch.ones(3), atol=1e-6)
    assert scores.min() >= 0


def test_grad_relevance_matches_oracle_openclip(clip_vit: OpenCLIPViT) -> None:
    images, targets = torch.rand(2, 3, 32, 32), torch.tensor([2, 1])
    scores = AttentionGradRelevance()(clip_vit, images, targets)
    expected = _oracle_grad_cam(*_clip_manual(clip_vit, images), targets)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_rollout_relevance_matches_oracle(timm_vit: TimmViT, clip_vit: OpenCLIPViT) -> None:
    images, targets = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    for vit, manual in ((timm_vit, _timm_manual), (clip_vit, _clip_manual)):
        scores = AttentionRolloutRelevance()(vit, images, targets)
        with torch.no_grad():
            expected = _oracle_rollout(manual(vit, images)[1])  # type: ignore[operator]
        assert torch.allclose(scores, expected, atol=1e-5)
        assert not scores.requires_grad


def test_seed_scale_changes_the_map(timm_vit: TimmViT) -> None:
    """The rollout is not scale-invariant: scaling the logits changes the normalised map."""
    images, targets = torch.rand(3, 3, 32, 32), torch.tensor([1, 2, 3])
    base = AttentionGradRelevance()(timm_vit, images, targets)
    with torch.no_grad():
        timm_vit.model.head.weight.mul_(20.0)
        timm_vit.model.head.bias.mul_(20.0)
    scaled = AttentionGradRelevance()(timm_vit, images, targets)
    assert (base - scaled).abs().max() > 1e-3
    expected = _oracle_grad_cam(*_timm_manual(timm_vit, images), targets)
    assert torch.allclose(scaled, expected, atol=1e-5)


@pytest.mark.parametrize("relevance", [AttentionGradRelevance(), AttentionRolloutRelevance()])
def test_no_parameter_grad_and_modes_restored(timm_vit: TimmViT, relevance: RelevanceMap) -> None:
    timm_vit.train()
    timm_vit.model.blocks[1].eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in timm_vit.named_modules()}
    params = list(timm_vit.parameters())
    params[0].grad = torch.ones_like(params[0])
    seen: list[bool] = []
    timm_vit.model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    scores = relevance(timm_vit, images, torch.tensor([0, 1]))
    assert seen == [False]  # computed in eval mode
    assert {name: m.training for name, m in timm_vit.named_modules()} == modes
    assert torch.equal(params[0].grad, torch.ones_like(params[0]))
    assert all(p.grad is None for p in params[1:])
    assert images.grad is None
    assert not scores.requires_grad and scores.grad_fn is None
    assert all(blk.attn.fused_attn for blk in timm_vit.model.blocks)


def test_works_under_no_grad_and_with_frozen_model(timm_vit: TimmViT) -> None:
    images, targets = torch.rand(2, 3, 32, 32), torch.tensor([3, 5])
    reference = AttentionGradRelevance()(timm_vit, images, targets)
    timm_vit.requires_grad_(False)
    with torch.no_grad():
        frozen = AttentionGradRelevance()(timm_vit, images, targets)
    assert torch.allclose(reference, frozen)


def test_targets_select_the_seed(timm_vit: TimmViT) -> None:
    images = torch.rand(1, 3, 32, 32).expand(2, -1, -1, -1)
    scores = AttentionGradRelevance()(timm_vit, images, torch.tensor([0, 7]))
    assert not torch.allclose(scores[0], scores[1])


def test_bad_targets(timm_vit: TimmViT) -> None:
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        AttentionGradRelevance()(timm_vit, images, torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        AttentionGradRelevance()(timm_vit, images, torch.tensor([0.0, 1.0]))


def test_config_round_trip() -> None:
    assert AttentionGradRelevance(last_blocks=3).config() == {
        "class_path": "cfmask.relevance.attention.AttentionGradRelevance",
        "init_args": {"last_blocks": 3},
    }
    assert AttentionRolloutRelevance().config() == {
        "class_path": "cfmask.relevance.attention.AttentionRolloutRelevance",
        "init_args": {},
    }

"""Relevance is read at the representation the head uses: CLS, mean of patches, attention pool.

Every expectation is computed here from the model's own weights or captured
probabilities with loops written out, independently of cfmask's rollout code.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from cfmask.backbones import OpenCLIPViT, TimmViT
from cfmask.relevance import AttentionGradRelevance, AttentionRolloutRelevance
from cfmask.testing import tiny_clip_args, tiny_timm_args


def _images(size: int = 32) -> Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))


def _gap_vit() -> TimmViT:
    args = tiny_timm_args()
    args["model_name"] = "vit_medium_patch16_gap_256"
    return TimmViT(**args).eval()


def _map_vit() -> TimmViT:
    args = tiny_timm_args()
    args["model_name"] = "vit_base_patch16_siglip_224"
    return TimmViT(**args).eval()


def test_mean_pooling_reads_the_mean_of_patch_rows_gradient_rule() -> None:
    vit = _gap_vit()
    assert vit.token_pooling == "mean" and vit.num_prefix_tokens == 0
    x, y = _images(), torch.tensor([1, 2])
    scores = AttentionGradRelevance()(vit, x, y)
    with torch.enable_grad(), vit.attention_probes() as probes:
        score = vit(x).gather(1, y[:, None]).sum()
        grads = torch.autograd.grad(score, probes)
    for b in range(2):
        t = probes[0].shape[-1]
        rel = torch.eye(t)
        for a, g in zip(probes, grads, strict=True):
            heads = [(g[b, h] * a[b, h]).clamp(min=0) for h in range(a.shape[1])]
            rel = rel + (sum(heads) / len(heads)) @ rel
        expected = rel.mean(0)  # every row is a patch row: mean pooling over them
        torch.testing.assert_close(scores[b], expected / (expected.max() + 1e-8))
        # not the first patch's row, which the head never reads on its own
        assert not torch.allclose(scores[b], rel[0] / rel[0].max())


def _final_tokens(vit: TimmViT, x: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = vit.model.norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            vit(x)
    finally:
        handle.remove()
    return seen[0]


def test_attention_pool_probabilities_recomputed_from_the_weights() -> None:
    vit = _map_vit()
    assert vit.token_pooling == "attention"
    x = _images()
    with torch.no_grad(), vit.attention_probes() as probes:
        logits = vit(x)
    with torch.no_grad():
        torch.testing.assert_close(logits, vit(x))  # the explicit pool computes the same
    pool = vit.model.attn_pool
    tokens = _final_tokens(vit, x)  # (B, T, C), what the pool attends over
    b, t, c = tokens.shape
    h = pool.num_heads
    q = pool.q(pool.latent)[0, 0].reshape(h, c // h)  # the one latent query
    k = pool.kv(tokens)[..., :c].reshape(b, t, h, c // h)
    expected = torch.stack(
        [
            torch.stack(
                [torch.softmax((k[i, :, j] @ q[j]) * (c // h) ** -0.5, dim=0) for j in range(h)]
            )
            for i in range(b)
        ]
    )  # (B, H, T)
    torch.testing.assert_close(probes[-1][:, :, 0], expected, rtol=1e-5, atol=1e-6)


def test_attention_pool_folded_into_the_rollout() -> None:
    vit = _map_vit()
    x, y = _images(), torch.tensor([0, 1])
    scores = AttentionRolloutRelevance()(vit, x, y)
    with torch.no_grad(), vit.attention_probes() as probes:
        vit(x)
    blocks, pool = probes[:-1], probes[-1]
    for b in range(2):
        t = blocks[0].shape[-1]
        rel = torch.eye(t)
        for a in blocks:
            rel = (0.5 * torch.eye(t) + 0.5 * a[b].mean(0)) @ rel
        row = pool[b].mean(0)[0] @ rel  # the pool's head-averaged row, one more step
        torch.testing.assert_close(scores[b], row / (row.max() + 1e-8))


def test_attention_pool_gradient_rule_uses_the_pool_gradient() -> None:
    vit = _map_vit()
    x, y = _images(), torch.tensor([2, 0])
    scores = AttentionGradRelevance()(vit, x, y)
    with torch.enable_grad(), vit.attention_probes() as probes:
        score = vit(x).gather(1, y[:, None]).sum()
        grads = torch.autograd.grad(score, probes)
    for b in range(2):
        t = probes[0].shape[-1]
        rel = torch.eye(t)
        for a, g in zip(probes[:-1], grads[:-1], strict=True):
            rel = rel + (g[b] * a[b]).clamp(min=0).mean(0) @ rel
        pool_row = (grads[-1][b] * probes[-1][b]).clamp(min=0).mean(0)[0]
        expected = pool_row @ rel
        torch.testing.assert_close(scores[b], expected / (expected.max() + 1e-8))


def test_coca_pooler_attention_matches_torch_multihead_attention(tmp_path: Any) -> None:
    args = tiny_clip_args(
        tmp_path,
        vision={"attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 3},
    )
    clip = OpenCLIPViT(**args).eval()
    assert clip.token_pooling == "attention"
    x = _images()
    seen: list[Tensor] = []
    handle = clip.visual.transformer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad(), clip.attention_probes() as probes:
            patched = clip(x)
    finally:
        handle.remove()
    pooler = clip.visual.attn_pool
    with torch.no_grad():
        keys = pooler.ln_k(seen[0])
        queries = pooler.ln_q(pooler.query).unsqueeze(0).expand(2, -1, -1)
        _, weights = pooler.attn(
            queries, keys, keys, need_weights=True, average_attn_weights=False
        )  # (B, H, queries, T)
        torch.testing.assert_close(probes[-1][:, :, 0], weights[:, :, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(patched, clip(x), rtol=1e-5, atol=1e-6)


def test_clip_mean_pooling_reads_patch_rows(tmp_path: Any) -> None:
    clip = OpenCLIPViT(**tiny_clip_args(tmp_path, vision={"pool_type": "avg"})).eval()
    assert clip.token_pooling == "mean"
    x, y = _images(), torch.tensor([0, 2])
    scores = AttentionRolloutRelevance()(clip, x, y)
    with torch.no_grad(), clip.attention_probes() as probes:
        clip(x)
    for b in range(2):
        t = probes[0].shape[-1]
        rel = torch.eye(t)
        for a in probes:
            rel = (0.5 * torch.eye(t) + 0.5 * a[b].mean(0)) @ rel
        row = rel[1:, 1:].mean(0)  # mean of the patch rows, CLS column dropped
        torch.testing.assert_close(scores[b], row / (row.max() + 1e-8))


@pytest.mark.parametrize("pool", ["max", "avgmax", ""])
def test_unreadable_timm_pooling_refused_at_construction(pool: str) -> None:
    with pytest.raises(TypeError, match="global_pool"):
        TimmViT(**tiny_timm_args(global_pool=pool))


def test_unreadable_open_clip_pooling_refused_at_construction(tmp_path: Any) -> None:
    args = tiny_clip_args(
        tmp_path,
        vision={"attentional_pool": True, "attn_pooler_heads": 2, "pool_type": "avg"},
    )
    with pytest.raises(TypeError, match="attentional pool"):
        OpenCLIPViT(**args)


def test_distilled_deit_refused_with_reason() -> None:
    args = tiny_timm_args()
    args["model_name"] = "deit_tiny_distilled_patch16_224"
    with pytest.raises(TypeError, match="distillation token"):
        TimmViT(**args)

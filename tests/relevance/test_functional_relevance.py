from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cfmask.functional import attention_grad_rollout, attention_rollout


def _random_attention(b: int, h: int, t: int) -> Tensor:
    return torch.softmax(torch.randn(b, h, t, t), dim=-1)


def test_grad_rollout_matches_loops() -> None:
    attns = [_random_attention(2, 3, 5) for _ in range(3)]
    grads = [torch.randn(2, 3, 5, 5) for _ in range(3)]
    out = attention_grad_rollout(attns, grads, num_prefix_tokens=1)
    for b in range(2):
        rel = torch.eye(5)
        for a, g in zip(attns, grads, strict=True):
            mean = sum(torch.clamp(g[b, h] * a[b, h], min=0) for h in range(3)) / 3
            rel = rel + mean @ rel
        assert torch.allclose(out[b], rel[0, 1:], atol=1e-6)


def test_clamp_before_head_mean_and_left_multiplication() -> None:
    a = torch.full((1, 2, 2, 2), 0.5)
    g = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    # clamp first: head 0 gives 0.5, head 1 gives 0 -> mean 0.25; mean first would give 0
    out = attention_grad_rollout([a], [g], num_prefix_tokens=1)
    assert torch.allclose(out, torch.tensor([[0.25]]))
    # order: R <- R + A R (left multiplication), blocks in forward order
    a1, a2 = _random_attention(1, 1, 4), _random_attention(1, 1, 4)
    ones = torch.ones_like(a1)
    out = attention_grad_rollout([a1, a2], [ones, ones], num_prefix_tokens=1)
    r1 = torch.eye(4) + a1[0, 0]
    assert torch.allclose(out[0], (r1 + a2[0, 0] @ r1)[0, 1:], atol=1e-6)
    assert not torch.allclose(out[0], (r1 + r1 @ a2[0, 0])[0, 1:], atol=1e-4)
    reversed_order = attention_grad_rollout([a2, a1], [ones, ones], num_prefix_tokens=1)
    assert not torch.allclose(out, reversed_order, atol=1e-4)


def test_prefix_tokens_dropped() -> None:
    attns = [_random_attention(1, 2, 6)]
    grads = [torch.rand(1, 2, 6, 6)]
    full = attention_grad_rollout(attns, grads, num_prefix_tokens=0)
    assert attention_grad_rollout(attns, grads, num_prefix_tokens=2).shape == (1, 4)
    assert torch.allclose(attention_grad_rollout(attns, grads, num_prefix_tokens=2), full[:, 2:])


def test_rollout_matches_loops() -> None:
    attns = [_random_attention(2, 4, 5) for _ in range(2)]
    out = attention_rollout(attns)
    for b in range(2):
        rel = torch.eye(5)
        for a in attns:
            rel = (0.5 * torch.eye(5) + 0.5 * a[b].mean(0)) @ rel
        assert torch.allclose(out[b], rel[0, 1:], atol=1e-6)


def test_errors() -> None:
    a = _random_attention(1, 1, 3)
    with pytest.raises(ValueError, match="at least one"):
        attention_rollout([])
    with pytest.raises(ValueError, match="gradients"):
        attention_grad_rollout([a, a], [a])
    with pytest.raises(ValueError, match=r"\(B, H, T, T\)"):
        attention_rollout([a[0]])
    with pytest.raises(ValueError, match="block 1"):
        attention_rollout([a, _random_attention(1, 1, 4)])
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        attention_rollout([a], num_prefix_tokens=3)

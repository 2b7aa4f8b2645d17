"""Relevance propagation through the attention of a Vision Transformer.

* :func:`attention_grad_rollout` is the gradient-weighted rule for self-attention of
  Chefer et al., "Generic Attention-model Explainability for Interpreting Bi-Modal and
  Encoder-Decoder Transformers", ICCV 2021, applied to every block as in the reference
  code of Xiao et al., "Masked Images Are Counterfactual Samples for Robust Fine-tuning",
  CVPR 2023 (arXiv:2303.03052), where it drives the object/context masks.
* :func:`attention_rollout` is the gradient-free rollout of Abnar & Zuidema,
  "Quantifying Attention Flow in Transformers", ACL 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ("attention_grad_rollout", "attention_rollout")


def _check(attentions: Sequence[Tensor], num_prefix_tokens: int) -> tuple[int, int]:
    if len(attentions) == 0:
        raise ValueError("need the attention probabilities of at least one block")
    shape = attentions[0].shape
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ValueError(f"attention must have shape (B, H, T, T), got {tuple(shape)}")
    for i, a in enumerate(attentions):
        if a.shape != shape:
            raise ValueError(
                f"all blocks must share one (B, H, T, T) shape; block 0 has {tuple(shape)}, "
                f"block {i} has {tuple(a.shape)}"
            )
    if not 0 <= num_prefix_tokens < shape[-1]:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} must lie in [0, T={shape[-1]})")
    return shape[0], shape[-1]


def attention_grad_rollout(
    attentions: Sequence[Tensor],
    grads: Sequence[Tensor],
    num_prefix_tokens: int = 1,
) -> Tensor:
    """Chefer et al.'s gradient-weighted relevance rollout, read at the CLS row.

    Starting from ``R = I``, each block in forward order updates
    ``R <- R + mean_h[(dy/dA * A)^+] @ R``: gradient times probability, clamped at zero
    per head *before* averaging over heads, then left-multiplied. The result is the
    first (CLS) row over the patch tokens, without any normalisation.

    Args:
        attentions: Per block, in forward order, ``(B, H, T, T)`` post-softmax
            attention probabilities.
        grads: Gradients of the explained score with respect to each tensor in
            ``attentions``; same shapes.
        num_prefix_tokens: ``P``, tokens before the patch tokens (CLS first).

    Returns:
        ``(B, T - P)`` un-normalised, non-negative relevance of each patch token for
        the CLS output.

    Raises:
        ValueError: On mismatched lengths or shapes.

    Example:
        >>> a = torch.full((1, 2, 3, 3), 1 / 3)
        >>> g = torch.ones(1, 2, 3, 3)
        >>> attention_grad_rollout([a, a], [g, g]).round(decimals=4)
        tensor([[1., 1.]])
    """
    if len(grads) != len(attentions):
        raise ValueError(f"got {len(attentions)} attention maps but {len(grads)} gradients")
    batch, tokens = _check(attentions, num_prefix_tokens)
    ref = attentions[0]
    rel = torch.eye(tokens, dtype=ref.dtype, device=ref.device).expand(batch, tokens, tokens)
    for attn, grad in zip(attentions, grads, strict=True):
        if grad.shape != attn.shape:
            raise ValueError(
                f"gradient shape {tuple(grad.shape)} differs from attention {tuple(attn.shape)}"
            )
        weighted = (grad * attn).clamp(min=0).mean(dim=1)  # (B, T, T)
        rel = rel + weighted @ rel
    return rel[:, 0, num_prefix_tokens:]


def attention_rollout(attentions: Sequence[Tensor], num_prefix_tokens: int = 1) -> Tensor:
    """Abnar & Zuidema's attention rollout, read at the CLS row.

    ``R = prod_l (0.5 I + 0.5 Abar_l)`` with ``Abar_l`` the head-averaged attention of
    block ``l``, row-normalised; blocks are multiplied in forward order
    (``R <- (0.5 I + 0.5 Abar_l) @ R``).

    Args:
        attentions: Per block, in forward order, ``(B, H, T, T)`` post-softmax
            attention probabilities.
        num_prefix_tokens: ``P``, tokens before the patch tokens (CLS first).

    Returns:
        ``(B, T - P)`` relevance of each patch token for the CLS output.

    Example:
        >>> a = torch.full((1, 1, 3, 3), 1 / 3)
        >>> attention_rollout([a])
        tensor([[0.1667, 0.1667]])
    """
    batch, tokens = _check(attentions, num_prefix_tokens)
    ref = attentions[0]
    eye = torch.eye(tokens, dtype=ref.dtype, device=ref.device)
    rel = eye.expand(batch, tokens, tokens)
    for attn in attentions:
        mean = attn.mean(dim=1)
        mean = mean / mean.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(mean.dtype).tiny)
        rel = (0.5 * eye + 0.5 * mean) @ rel
    return rel[:, 0, num_prefix_tokens:]

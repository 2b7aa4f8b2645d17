"""Relevance propagation through the attention of a Vision Transformer.

* :func:`attention_grad_rollout` is the gradient-weighted rule for self-attention of
  Chefer et al., "Generic Attention-model Explainability for Interpreting Bi-Modal and
  Encoder-Decoder Transformers", ICCV 2021, applied to every block as in the reference
  code of Xiao et al., "Masked Images Are Counterfactual Samples for Robust Fine-tuning",
  CVPR 2023 (arXiv:2303.03052), where it drives the object/context masks.
* :func:`attention_rollout` is the gradient-free rollout of Abnar & Zuidema,
  "Quantifying Attention Flow in Transformers", ACL 2020.

Both build a ``(B, T, T)`` matrix ``R`` whose row ``i`` says how much each input token
contributes to the output token ``i``, then read it at the representation the head
uses (``pooling``, see :func:`read_relevance`):

* ``"cls"``: row 0, the class token.
* ``"mean"``: the mean of the patch rows. The pooled feature is
  ``(1/N) sum_i x_i`` over the output patch tokens; ``R`` propagates linearly, so the
  relevance of input token ``j`` to the mean is the mean of the rows' entries ``j``.
* ``"attention"``: a latent-query attention pool (timm ``AttentionPoolLatent``,
  SigLIP's MAP head, open_clip's ``attentional_pool``). The latent query is not an
  input token, so the pool is one more attention step without a residual path from
  the inputs: its row over the tokens is ``a = mean_h A_pool`` (rollout) or
  ``a = mean_h[(dy/dA_pool * A_pool)^+]`` (gradient-weighted rule), averaged over the
  pooled latent rows, and the readout is ``a @ R``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ("Pooling", "attention_grad_rollout", "attention_rollout", "read_relevance")

Pooling = Literal["cls", "mean", "attention"]


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


def _pool_row(pool_attention: Tensor, pool_grad: Tensor | None, batch: int, tokens: int) -> Tensor:
    """The pool's ``(B, T)`` row over the tokens (head- and latent-averaged)."""
    if pool_attention.ndim != 4 or pool_attention.shape[0] != batch:
        raise ValueError(
            f"pool_attention must have shape (B, H, L, T) with B={batch}, got "
            f"{tuple(pool_attention.shape)}"
        )
    width = pool_attention.shape[-1]
    if width > tokens:
        raise ValueError(f"pool_attention covers {width} tokens but the blocks have {tokens}")
    if pool_grad is not None:
        if pool_grad.shape != pool_attention.shape:
            raise ValueError(
                f"pool gradient shape {tuple(pool_grad.shape)} differs from "
                f"pool_attention {tuple(pool_attention.shape)}"
            )
        row = (pool_grad * pool_attention).clamp(min=0).mean(dim=1).mean(dim=1)
    else:
        row = pool_attention.mean(dim=1).mean(dim=1)
    # a pool over the patch tokens only gives the prefix tokens zero weight
    return torch.nn.functional.pad(row, (tokens - width, 0))


def read_relevance(
    rel: Tensor, num_prefix_tokens: int, pooling: Pooling = "cls", pool_row: Tensor | None = None
) -> Tensor:
    """Read a ``(B, T, T)`` relevance matrix at the pooled representation.

    Args:
        rel: ``(B, T, T)``; row ``i`` is the relevance of every input token to output
            token ``i``.
        num_prefix_tokens: ``P``, tokens before the patch tokens.
        pooling: ``"cls"`` (row 0, the first token), ``"mean"`` (mean of the patch rows) or
            ``"attention"`` (``pool_row @ rel``).
        pool_row: ``(B, T)`` weights of the attention pool over the tokens; needed
            for ``"attention"`` only.

    Returns:
        ``(B, T - P)`` relevance of each input patch token.

    Raises:
        ValueError: On an unknown pooling or a missing ``pool_row``.

    Example:
        >>> rel = torch.eye(3)[None]
        >>> read_relevance(rel, 1, "mean")
        tensor([[0.5000, 0.5000]])
    """
    p = num_prefix_tokens
    if pooling == "cls":
        return rel[:, 0, p:]
    if pooling == "mean":
        return rel[:, p:, p:].mean(dim=1)
    if pooling == "attention":
        if pool_row is None:
            raise ValueError("the attention-pool readout needs the pool's attention")
        return (pool_row[:, None, :].to(rel.dtype) @ rel)[:, 0, p:]
    raise ValueError(f"unknown pooling {pooling!r}; choose 'cls', 'mean' or 'attention'")


def attention_grad_rollout(
    attentions: Sequence[Tensor],
    grads: Sequence[Tensor],
    num_prefix_tokens: int = 1,
    pooling: Pooling = "cls",
    pool_attention: Tensor | None = None,
    pool_grad: Tensor | None = None,
) -> Tensor:
    """Chefer et al.'s gradient-weighted relevance rollout, read at the pooled output.

    Starting from ``R = I``, each block in forward order updates
    ``R <- R + mean_h[(dy/dA * A)^+] @ R``: gradient times probability, clamped at zero
    per head *before* averaging over heads, then left-multiplied. The result is read
    at ``pooling`` (module docstring; the CLS row by default) over the patch tokens,
    without any normalisation.

    Args:
        attentions: Per block, in forward order, ``(B, H, T, T)`` post-softmax
            attention probabilities.
        grads: Gradients of the explained score with respect to each tensor in
            ``attentions``; same shapes.
        num_prefix_tokens: ``P``, tokens before the patch tokens (CLS first).
        pooling: ``"cls"``, ``"mean"`` or ``"attention"``.
        pool_attention: ``(B, H, L, T)`` (or ``(B, H, L, T - P)``) probabilities of an
            attention pool over its ``L`` pooled latent rows, for ``"attention"``.
        pool_grad: The score's gradient with respect to ``pool_attention``.

    Returns:
        ``(B, T - P)`` un-normalised, non-negative relevance of each patch token for
        the pooled output.

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
    row = None
    if pooling == "attention":
        if pool_attention is None or pool_grad is None:
            raise ValueError("the attention-pool readout needs pool_attention and pool_grad")
        row = _pool_row(pool_attention, pool_grad, batch, tokens)
    return read_relevance(rel, num_prefix_tokens, pooling, row)


def attention_rollout(
    attentions: Sequence[Tensor],
    num_prefix_tokens: int = 1,
    pooling: Pooling = "cls",
    pool_attention: Tensor | None = None,
) -> Tensor:
    """Abnar & Zuidema's attention rollout, read at the pooled output.

    ``R = prod_l (0.5 I + 0.5 Abar_l)`` with ``Abar_l`` the head-averaged attention of
    block ``l``, row-normalised; blocks are multiplied in forward order
    (``R <- (0.5 I + 0.5 Abar_l) @ R``).

    Args:
        attentions: Per block, in forward order, ``(B, H, T, T)`` post-softmax
            attention probabilities.
        num_prefix_tokens: ``P``, tokens before the patch tokens (CLS first).
        pooling: ``"cls"`` (row 0), ``"mean"`` or ``"attention"`` (module docstring).
        pool_attention: ``(B, H, L, T)`` (or ``(B, H, L, T - P)``) probabilities of an
            attention pool over its pooled latent rows, for ``"attention"``.

    Returns:
        ``(B, T - P)`` relevance of each patch token for the pooled output.

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
    row = None
    if pooling == "attention":
        if pool_attention is None:
            raise ValueError("the attention-pool readout needs pool_attention")
        row = _pool_row(pool_attention, None, batch, tokens)
    return read_relevance(rel, num_prefix_tokens, pooling, row)

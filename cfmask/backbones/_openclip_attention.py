"""Explicit-softmax attention for open_clip image towers: capture and the unfused path.

Capturing post-softmax attention probabilities, as the relevance map of Xiao et al.
(CVPR 2023, arXiv:2303.03052, Sec. 3.2) needs, requires computing attention
explicitly: fused kernels never materialise the probabilities. open_clip builds its
transformer blocks in two ways, and each needs its own entry point because the
method to replace and its call signature differ:

* ``ResidualAttentionBlock`` with an ``nn.MultiheadAttention`` (every default block
  of open_clip 3.x): the block's ``attention(q_x, k_x, v_x, attn_mask)`` method is
  replaced (:func:`_mha_block_attention`). The MHA may be sequence-first and
  applies its dropout by probability (``mha.dropout``).
* blocks whose ``attn`` is open_clip's own ``Attention`` module (the custom blocks
  of open_clip 3.x and every block of its main branch): that module's
  ``forward(x, k_x, v_x, attn_mask)`` is replaced
  (:func:`_attention_module_forward`). It is batch-first, refuses boolean masks and
  carries optional QK norms, scaled-cosine logits, head scaling, an inner norm and
  dropout modules.

Both entry points adapt their inputs and call the one computation
:func:`_explicit_self_attention`, which reads the options an ``nn.MultiheadAttention``
does not have as absent, so an MHA block goes through the plain scaled dot-product.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfmask.backbones.base import AttentionCaptureError

__all__ = ("AttentionPatch", "attention_patches")

#: ``(owner, attribute, replacement)``: set ``owner.<attribute> = replacement`` to
#: switch one block to explicit attention; pop it from ``owner.__dict__`` to undo.
AttentionPatch = tuple[nn.Module, str, Callable[..., Tensor]]


def attention_patches(
    visual: Any, model_name: str, probes: list[Tensor] | None
) -> list[AttentionPatch]:
    """One explicit-attention patch per block of an open_clip image tower.

    Args:
        visual: open_clip's ``VisionTransformer`` (``visual.transformer.resblocks``).
        model_name: Name used in error messages.
        probes: List the ``(B, heads, T, T)`` probabilities are appended to, in
            forward order; ``None`` records nothing (explicit attention only).

    Returns:
        The patches, in block order.

    Raises:
        AttentionCaptureError: If the tower has no blocks, or a block's attention is
            of neither supported kind.
    """
    blocks = list(getattr(visual.transformer, "resblocks", []))
    if not blocks:
        raise AttentionCaptureError(
            f"cannot capture attention of {model_name!r}: no transformer.resblocks"
        )
    patches: list[AttentionPatch] = []
    for i, blk in enumerate(blocks):
        kind = _attention_kind(blk)
        if kind == "mha":
            method = types.MethodType(_mha_block_attention(probes), blk)
            patches.append((blk, "attention", method))
        elif kind == "attention":
            method = types.MethodType(_attention_module_forward(probes), blk.attn)
            patches.append((blk.attn, "forward", method))
        else:
            raise AttentionCaptureError(
                f"cannot capture attention of {model_name!r}: block {i} "
                f"({type(blk).__name__}) has neither a packed-projection "
                f"nn.MultiheadAttention with an `attention` method nor open_clip's "
                f"`Attention` module (timm image towers are not supported)."
            )
    return patches


def _attention_kind(blk: nn.Module) -> str | None:
    """``"mha"``, ``"attention"`` (open_clip's own module) or ``None`` (unsupported)."""
    attn = getattr(blk, "attn", None)
    if isinstance(attn, nn.MultiheadAttention):
        packed = attn._qkv_same_embed_dim and attn.in_proj_weight is not None
        return "mha" if packed and callable(getattr(blk, "attention", None)) else None
    if (
        isinstance(attn, nn.Module)
        and hasattr(attn, "in_proj_weight")
        and isinstance(getattr(attn, "num_heads", None), int)
        and isinstance(getattr(attn, "out_proj", None), nn.Linear)
    ):
        return "attention"
    return None


def _mha_block_attention(probes: list[Tensor] | None) -> Callable[..., Tensor]:
    """Build a replacement for ``ResidualAttentionBlock.attention`` (``nn.MultiheadAttention``).

    The probabilities are appended to ``probes`` unless it is ``None``.
    """

    def attention(
        blk: nn.Module,
        q_x: Tensor,
        k_x: Tensor | None = None,
        v_x: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        if k_x is not None or v_x is not None:
            raise AttentionCaptureError("attention probes support self-attention blocks only")
        mha = blk.attn
        assert isinstance(mha, nn.MultiheadAttention)
        x = q_x if mha.batch_first else q_x.transpose(0, 1)  # (B, T, D)

        def dropout(probs: Tensor) -> Tensor:
            return F.dropout(probs, p=mha.dropout, training=mha.training)

        out = _explicit_self_attention(mha, x, attn_mask, probes, dropout)
        return out if mha.batch_first else out.transpose(0, 1)

    return attention


def _attention_module_forward(probes: list[Tensor] | None) -> Callable[..., Tensor]:
    """Build a replacement for ``open_clip.transformer.Attention.forward``.

    Batch-first, self-attention only; boolean masks are refused because open_clip
    versions disagree on what ``True`` means. The probabilities are appended to
    ``probes`` unless it is ``None``.
    """

    def forward(
        module: nn.Module,
        x: Tensor,
        k_x: Tensor | None = None,
        v_x: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        if (k_x is not None and k_x is not x) or (v_x is not None and v_x is not x):
            raise AttentionCaptureError("attention probes support self-attention blocks only")
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            raise AttentionCaptureError(
                "attention probes take additive float masks; open_clip versions disagree "
                "on what True means in a boolean mask"
            )

        def dropout(probs: Tensor) -> Tensor:
            return _optional(module, "attn_drop", probs)

        out = _explicit_self_attention(module, x, attn_mask, probes, dropout)
        return _optional(module, "out_drop", out)

    return forward


def _explicit_self_attention(
    module: nn.Module,
    x: Tensor,
    attn_mask: Tensor | None,
    probes: list[Tensor] | None,
    dropout: Callable[[Tensor], Tensor],
) -> Tensor:
    """Self-attention of ``module``'s weights on batch-first ``x``, softmax written out.

    Follows open_clip's ``Attention``: packed (or separate) q/k/v projections,
    optional QK layer norms, scaled-cosine logits with a clamped per-head scale when
    ``logit_scale`` exists (else ``q k^T`` scaled by ``module.scale`` or
    ``head_dim ** -0.5``), an additive ``(B * heads, T, T)`` or
    ``(B, heads, T, T)`` mask, ``dropout`` on the probabilities, optional per-head
    output scaling and inner norm, and the output projection. An
    ``nn.MultiheadAttention`` has none of the optional parts.

    Args:
        module: The attention module (``in_proj_weight``, ``num_heads``, ``out_proj``).
        x: ``(B, T, D)`` tokens.
        attn_mask: Optional additive float mask, ``(B * heads, T, T)`` or
            broadcastable to ``(B, heads, T, T)``.
        probes: List the ``(B, heads, T, T)`` post-softmax probabilities are
            appended to (before dropout), or ``None``.
        dropout: Applied to the probabilities before they weight the values.

    Returns:
        ``(B, T, D)`` output of the output projection.
    """
    attn: Any = module
    b, t, d = x.shape
    h = int(attn.num_heads)
    hd = d // h
    weight: Any = attn.in_proj_weight
    bias: Any = attn.in_proj_bias
    if weight is not None:
        q, k, v = F.linear(x, weight, bias).chunk(3, dim=-1)
    else:
        bq, bk, bv = bias.chunk(3) if bias is not None else (None, None, None)
        q = F.linear(x, attn.q_proj_weight, bq)
        k = F.linear(x, attn.k_proj_weight, bk)
        v = F.linear(x, attn.v_proj_weight, bv)
    q, k, v = (z.reshape(b, t, h, hd).transpose(1, 2) for z in (q, k, v))
    logit_scale: Any = getattr(attn, "logit_scale", None)
    if logit_scale is not None:
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scores = scores * torch.clamp(logit_scale, max=attn.logit_scale_max).exp()
    else:
        q, k = _optional(attn, "ln_q", q), _optional(attn, "ln_k", k)
        scale = float(getattr(attn, "scale", hd**-0.5))
        scores = (q * scale) @ k.transpose(-2, -1)  # (B, H, T, T)
    if attn_mask is not None:
        mask = attn_mask.to(scores.dtype)
        scores = scores + (mask.view(b, h, t, t) if mask.ndim == 3 else mask)
    probs = scores.softmax(dim=-1)
    if probes is not None:
        probes.append(probs)
    out = dropout(probs) @ v
    head_scale: Any = getattr(attn, "head_scale", None)
    if head_scale is not None:
        out = out * head_scale
    out = _optional(attn, "ln_inner", out.transpose(1, 2).reshape(b, t, d))
    return attn.out_proj(out)  # type: ignore[no-any-return]


def _optional(module: nn.Module, name: str, x: Tensor) -> Tensor:
    """Apply ``module.<name>`` when it exists (open_clip's optional norms and dropouts)."""
    layer = getattr(module, name, None)
    return layer(x) if layer is not None else x

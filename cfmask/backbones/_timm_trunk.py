"""Attention capture, token hiding and pooling for timm ViT trunks.

Shared by :class:`~cfmask.backbones.TimmViT` and by :class:`~cfmask.backbones.OpenCLIPViT`
for open_clip models whose image tower is a timm trunk (SigLIP, EVA-CLIP, ...). Four
timm model classes are known:

* ``VisionTransformer`` (CLIP, DeiT, DINOv2, SigLIP, ``*_gap_*``, ...): everything.
* ``Eva`` (EVA-02 and the rotary-embedding ViTs ``vit_*_rope*``): everything; when
  patch tokens are dropped, the rotary embedding is gathered at the kept positions.
* ``Beit`` and ``VisionTransformerRelPos`` (relative position bias): attention capture
  and relevance; patch hiding by token dropping or key masking is refused, because
  their blocks compute the relative position bias for the full patch grid inside the
  attention and take no attention mask.

Anything else is refused when the adapter is built (:func:`inspect_trunk`), with the
block class in the message, never inside a training step.

The pooled representation is read in one of three ways (:data:`TokenPooling`): the
class token, the mean over patch tokens, or a latent-query attention pool (timm's
``AttentionPoolLatent``, SigLIP's "MAP" head); see
:mod:`cfmask.functional.relevance` for how each is read from the rollout.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.hooks import RemovableHandle

from cfmask.backbones._tokens import hide_patch_tokens
from cfmask.backbones.base import AttentionCaptureError, TokenPooling

__all__ = (
    "TokenPooling",
    "TrunkSupport",
    "inspect_trunk",
    "masked_mean",
    "trunk_attention_probes",
    "trunk_pooled_features",
    "trunk_set_fused_attention",
)


#: timm model classes with a token path of their own in :func:`trunk_pooled_features`.
_TOKEN_HIDING_CLASSES = ("VisionTransformer", "Eva")
#: timm model classes whose attention can be captured but whose patches can't be hidden.
_RELATIVE_BIAS_CLASSES = ("Beit", "VisionTransformerRelPos")


@dataclass(frozen=True)
class TrunkSupport:
    """What cfmask can do with one timm trunk.

    Attributes:
        family: The timm model class name (``"VisionTransformer"``, ``"Eva"``, ...).
        pooling: How the head reads the token sequence.
        token_hiding: ``None`` when patches can be hidden (token dropping, key
            masking); otherwise the reason why not.
    """

    family: str
    pooling: TokenPooling
    token_hiding: str | None


def _family(model: nn.Module) -> str:
    """The first timm class in ``model``'s MRO that cfmask knows, else its own name."""
    known = _TOKEN_HIDING_CLASSES + _RELATIVE_BIAS_CLASSES
    for cls in type(model).__mro__:
        if cls.__name__ in known and cls.__module__.startswith("timm."):
            return cls.__name__
    return type(model).__name__


def trunk_pooling(model: Any, model_name: str) -> TokenPooling:
    """How ``model``'s head reads the final token sequence.

    Raises:
        TypeError: For pooling that no relevance readout matches (max pooling, no
            pooling, mean pooling that includes the prefix tokens).
    """
    if getattr(model, "attn_pool", None) is not None:
        pool = model.attn_pool
        if type(pool).__name__ != "AttentionPoolLatent":
            raise TypeError(
                f"{model_name!r} pools with a {type(pool).__name__}; cfmask reads attention "
                f"pools of timm's AttentionPoolLatent only."
            )
        if getattr(pool, "pool", "token") not in ("token", "avg"):
            raise TypeError(
                f"{model_name!r}: AttentionPoolLatent(pool_type={pool.pool!r}) keeps every "
                f"latent; cfmask needs one pooled vector ('token' or 'avg')."
            )
        return "attention"
    kind = str(getattr(model, "global_pool", "token"))
    if kind == "token":
        if int(getattr(model, "num_prefix_tokens", 0)) < 1:
            raise TypeError(f"{model_name!r} pools a class token but has no prefix token")
        return "cls"
    if kind == "avg" and not getattr(model, "pool_include_prefix", False):
        return "mean"
    raise TypeError(
        f"cannot read the relevance of {model_name!r} at its pooled output: "
        f"global_pool={kind!r}"
        f"{' including the prefix tokens' if kind == 'avg' else ''} has no attention-rollout "
        f"readout. Build it with global_pool='token', 'avg' or 'map'."
    )


def inspect_trunk(model: Any, model_name: str) -> TrunkSupport:
    """Check that ``model`` is a timm ViT whose attention and pooling cfmask can read.

    Args:
        model: A timm model.
        model_name: Name used in error messages.

    Returns:
        The trunk's family, pooling kind and token-hiding support.

    Raises:
        TypeError: Naming the model or block class and the reason, for models without
            transformer blocks, blocks whose attention probabilities are not reachable
            (no explicit-softmax path with an ``attn_drop`` after the softmax), an
            unknown model class, or unreadable pooling.
    """
    family = _family(model)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList | nn.Sequential) or len(blocks) == 0:
        raise TypeError(
            f"cfmask needs a timm ViT (VisionTransformer, Eva, Beit or "
            f"VisionTransformerRelPos); {model_name!r} builds a "
            f"{type(model).__name__} without a list of transformer blocks. Use a ViT such "
            f"as 'vit_base_patch16_clip_224.openai'."
        )
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if not _attention_reachable(attn):
            raise TypeError(
                f"{model_name!r}: block {i} ({type(blk).__name__}, attention "
                f"{type(attn).__name__}) is not supported: its attention probabilities are "
                f"not reachable (cfmask needs timm's explicit-softmax path, a `fused_attn` "
                f"flag and an `attn_drop` applied to the probabilities)."
            )
    if family not in _TOKEN_HIDING_CLASSES + _RELATIVE_BIAS_CLASSES:
        raise TypeError(
            f"{model_name!r} builds a {type(model).__name__} with {type(blocks[0]).__name__} "
            f"blocks; cfmask supports timm's VisionTransformer, Eva, Beit and "
            f"VisionTransformerRelPos, whose token sequence and pooling it knows."
        )
    if getattr(model, "head_dist", None) is not None:
        raise TypeError(
            f"{model_name!r} builds a {type(model).__name__}: its prediction averages two "
            f"heads on two tokens (class and distillation token), a readout no relevance "
            f"rule here matches; use the non-distilled model (e.g. 'deit3_small_patch16_224')."
        )
    pooling = trunk_pooling(model, model_name)
    hiding: str | None = None
    if family in _RELATIVE_BIAS_CLASSES:
        hiding = (
            f"its blocks ({type(blocks[0]).__name__}) add a relative position bias built for the "
            f"full patch grid inside the attention and take no attention mask, so patch "
            f"tokens can be neither dropped nor hidden as keys; use a masker that fills "
            f"pixels (e.g. SingleImageRefiller) instead."
        )
    return TrunkSupport(family, pooling, hiding)


# ------------------------------------------------------------------ attention capture
def _latent_pool_forward(probes: list[Tensor] | None) -> Any:
    """Explicit replacement for ``AttentionPoolLatent.forward`` that records probabilities.

    For ``pool_type='token'`` only the first latent query is computed (the only one
    the pooled output uses, exactly), so the recorded ``(B, heads, L', T)`` holds the
    rows whose outputs are pooled: ``L' = 1`` for ``'token'``, all latents for
    ``'avg'``.
    """

    def forward(pool: Any, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        if pool.pos_embed is not None:
            x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
        latent = pool.latent[:, :1] if pool.pool == "token" else pool.latent
        rows = latent.shape[1]
        q = pool.q(latent.expand(b, -1, -1)).reshape(b, rows, pool.num_heads, pool.head_dim)
        q = q.transpose(1, 2)
        kv = pool.kv(x).reshape(b, n, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        q, k = pool.q_norm(q), pool.k_norm(k)
        scores = (q * pool.scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            scores = scores + attn_mask
        probs = scores.softmax(dim=-1)
        if probes is not None:
            probes.append(probs)
        out: Tensor = (probs @ v).transpose(1, 2).reshape(b, rows, c)
        out = pool.proj_drop(pool.proj(out))
        if pool.mlp is not None:
            out = out + pool.mlp(pool.norm(out))
        return out[:, 0] if pool.pool == "token" else out.mean(1)

    return forward


def _attention_reachable(attn: Any) -> bool:
    """Whether a timm attention module exposes its probabilities (explicit softmax path).

    cfmask reads them through timm's ``fused_attn`` switch and the ``attn_drop`` module
    that is applied to the probabilities.
    """
    return hasattr(attn, "fused_attn") and isinstance(getattr(attn, "attn_drop", None), nn.Module)


def _attention_modules(model: Any, model_name: str) -> list[Any]:
    attns: list[Any] = []
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        if not _attention_reachable(attn):
            raise AttentionCaptureError(
                f"cannot capture attention of {model_name!r}: block {i} "
                f"({type(blk).__name__}) has no attn.fused_attn/attn.attn_drop of timm's "
                f"attention; use a timm ViT with standard attention blocks."
            )
        attns.append(attn)
    return attns


@contextmanager
def trunk_attention_probes(model: Any, model_name: str) -> Iterator[list[Tensor]]:
    """Record each block's ``(B, heads, T, T)`` post-softmax attention, in the graph.

    Sets ``fused_attn = False`` on every block's attention and hooks its ``attn_drop``
    (called on the probabilities, even with ``p = 0``). For an attention-pool head
    the pool's ``forward`` is replaced by an explicit one that appends its
    ``(B, heads, L', T')`` probabilities last (``T' = T`` or the patch tokens only,
    when the pool skips the prefix). Gradient checkpointing is off meanwhile. All
    flags, hooks and methods are restored on exit, also on exceptions.

    Yields:
        The list receiving the probabilities, in forward order.
    """
    attns = _attention_modules(model, model_name)
    probes: list[Tensor] = []

    def record(_module: nn.Module, args: tuple[Tensor, ...], _output: Tensor) -> None:
        probes.append(args[0])

    flags = [a.fused_attn for a in attns]
    handles: list[RemovableHandle] = []
    checkpointing = bool(getattr(model, "grad_checkpointing", False))
    pool = getattr(model, "attn_pool", None)
    try:
        if checkpointing:
            model.set_grad_checkpointing(False)
        for a in attns:
            a.fused_attn = False
            handles.append(a.attn_drop.register_forward_hook(record))
        if pool is not None:
            pool.forward = types.MethodType(_latent_pool_forward(probes), pool)
        yield probes
    finally:
        for h in handles:
            h.remove()
        for a, flag in zip(attns, flags, strict=True):
            a.fused_attn = flag
        if pool is not None:
            pool.__dict__.pop("forward", None)
        if checkpointing:
            model.set_grad_checkpointing(True)


def trunk_set_fused_attention(model: Any, model_name: str, enabled: bool) -> None:
    """Switch every block (and an attention pool) between fused and explicit softmax."""
    for attn in _attention_modules(model, model_name):
        attn.fused_attn = bool(enabled)
    pool = getattr(model, "attn_pool", None)
    if pool is not None and hasattr(pool, "fused_attn"):
        pool.fused_attn = bool(enabled)


# ------------------------------------------------------------------------ token path
@contextmanager
def _without_patch_dropout(model: Any) -> Iterator[None]:
    """Switch off the model's patch dropout (hidden patches already leave the sequence)."""
    saved = model.__dict__.get("_modules", {}).get("patch_drop", None)
    has_module = "patch_drop" in getattr(model, "_modules", {})
    try:
        if has_module and saved is not None:
            model._modules["patch_drop"] = None if _family(model) == "Eva" else nn.Identity()
        yield
    finally:
        if has_module:
            model._modules["patch_drop"] = saved


def _pool_tokens(model: Any, tokens: Tensor, pooling: TokenPooling, bias: Tensor | None) -> Tensor:
    """The trunk's pooling, with hidden keys left out of the pool too."""
    prefix = int(model.num_prefix_tokens)
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        patches = tokens[:, prefix:]
        if bias is None:
            return patches.mean(dim=1)
        return masked_mean(patches, torch.isfinite(bias[:, 0, 0, prefix:]))
    pool = model.attn_pool
    if not getattr(model, "pool_include_prefix", _family(model) == "Eva"):
        tokens = tokens[:, prefix:]
        bias = bias[..., prefix:] if bias is not None else None
    return pool(tokens, attn_mask=bias)  # type: ignore[no-any-return]


def _run_blocks(model: Any, tokens: Tensor, **kwargs: Any) -> Tensor:
    checkpointed = bool(getattr(model, "grad_checkpointing", False)) and torch.is_grad_enabled()
    for blk in model.blocks:
        if checkpointed:
            tokens = checkpoint(blk, tokens, use_reentrant=False, **kwargs)
        else:
            tokens = blk(tokens, **kwargs)
    return tokens


def _gather_rope(model: Any, rope: Tensor, tokens: Tensor, keep_index: Tensor) -> Tensor:
    """The rotary embedding at the kept patches, shaped as timm's own patch dropout does."""
    from timm.layers.pos_embed_sincos import apply_keep_indices_nlc

    kept = apply_keep_indices_nlc(tokens, rope, keep_index.long())
    return kept.transpose(0, 1) if getattr(model, "rope_mixed", False) else kept.unsqueeze(1)


def trunk_pooled_features(
    model: Any,
    support: TrunkSupport,
    x: Tensor,
    keep_index: Tensor | None,
    key_mask: Tensor | None,
    num_patches: int,
    model_name: str,
) -> Tensor:
    """Pooled features (after ``fc_norm`` and head dropout, before ``head``) with hidden patches.

    Args:
        model: The timm trunk.
        support: Its :func:`inspect_trunk` result.
        x: ``(B, C, H, W)`` normalised images.
        keep_index: Optional ``(B, K)`` patch indices to keep (dropped after the
            positional embedding; the model's patch dropout is skipped then).
        key_mask: Optional ``(B, N)`` bool, ``True`` hides that patch as a key from
            every query of every block and of an attention pool; mean pooling
            averages the visible patches only.
        num_patches: ``N``.
        model_name: Name used in error messages.

    Returns:
        ``(B, D)`` pooled pre-logits features.

    Raises:
        NotImplementedError: For trunks whose patches can't be hidden (relative
            position bias), with the reason.
    """
    if keep_index is None and key_mask is None:
        return model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[no-any-return]
    if support.token_hiding is not None:
        raise NotImplementedError(f"{model_name!r}: {support.token_hiding}")
    prefix = int(model.num_prefix_tokens)
    tokens = model.patch_embed(x)
    with _without_patch_dropout(model):
        if support.family == "Eva":
            tokens, rope = model._pos_embed(tokens)
        else:
            tokens, rope = model._pos_embed(tokens), None
            tokens = model.patch_drop(tokens)
    tokens = model.norm_pre(tokens)
    tokens, bias = hide_patch_tokens(tokens, keep_index, key_mask, num_patches, prefix)
    if support.family == "Eva":
        if rope is not None and keep_index is not None:
            rope = _gather_rope(model, rope, tokens, keep_index)
        if getattr(model, "rope_mixed", False) and rope is not None:
            checkpointed = bool(model.grad_checkpointing) and torch.is_grad_enabled()
            for i, blk in enumerate(model.blocks):
                if checkpointed:
                    tokens = checkpoint(
                        blk, tokens, use_reentrant=False, rope=rope[i], attn_mask=bias
                    )
                else:
                    tokens = blk(tokens, rope=rope[i], attn_mask=bias)
        else:
            tokens = _run_blocks(model, tokens, rope=rope, attn_mask=bias)
    else:
        tokens = _run_blocks(model, tokens, **({"attn_mask": bias} if bias is not None else {}))
    tokens = model.norm(tokens)
    pooled = _pool_tokens(model, tokens, support.pooling, bias)
    return model.head_drop(model.fc_norm(pooled))  # type: ignore[no-any-return]


def masked_mean(tokens: Tensor, visible: Tensor) -> Tensor:
    """Mean over the visible rows of ``(B, T, D)`` tokens (``visible`` ``(B, T)`` bool)."""
    weight = visible.to(tokens.dtype)[..., None]
    return (tokens * weight).sum(1) / weight.sum(1).clamp_min(1)

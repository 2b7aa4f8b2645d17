"""Pooling of open_clip image towers: which kind, explicit attention pool, hidden patches.

open_clip's own ``VisionTransformer`` pools in one of three ways that cfmask can read
(:data:`~cfmask.backbones.base.TokenPooling`): the class token (``pool_type="tok"``),
the mean of the patch tokens (``pool_type="avg"``), or, for towers built with
``attentional_pool`` (CoCa), an ``AttentionalPooler`` whose first query output is the
pooled embedding. Image towers that wrap a timm trunk (``TimmModel``: SigLIP,
EVA-CLIP, ...) are handled by :mod:`cfmask.backbones._timm_trunk`; a tiny trunk for
tests can be requested with the cfmask-only ``vision_cfg["timm_model_kwargs"]``
(:func:`rebuild_timm_trunk`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfmask.backbones._timm_trunk import masked_mean
from cfmask.backbones.base import TokenPooling

__all__ = (
    "TRUNK_KWARGS_KEY",
    "explicit_pooler",
    "native_pooled",
    "native_pooling",
    "pop_trunk_kwargs",
    "rebuild_timm_trunk",
    "without_patch_dropout",
)

#: ``vision_cfg`` key (cfmask only) with ``timm.create_model`` keyword arguments of a
#: timm trunk, e.g. ``{"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}``.
TRUNK_KWARGS_KEY = "timm_model_kwargs"


def native_pooling(visual: Any, model_name: str) -> TokenPooling:
    """The pooling kind of an open_clip ``VisionTransformer``.

    Raises:
        TypeError: For pooling without a relevance readout (the contrastive attention
            pool variants, an attention pool read by averaging, no pooling).
    """
    pool_type = str(getattr(visual, "pool_type", "tok"))
    if getattr(visual, "attn_pool", None) is not None:
        if getattr(visual, "attn_pool_contrastive", None) is not None or pool_type != "tok":
            raise TypeError(
                f"cannot read the relevance of {model_name!r} at its pooled output: the "
                f"attentional pool with attn_pooler type "
                f"{getattr(visual, 'attn_pool_type', '?')!r} and pool_type={pool_type!r} has "
                f"no readout; cfmask reads the original CoCa pooler (pool_type='tok')."
            )
        return "attention"
    if pool_type == "tok":
        return "cls"
    if pool_type == "avg":
        return "mean"
    raise TypeError(
        f"cannot read the relevance of {model_name!r}: pool_type={pool_type!r} pools no "
        f"single vector; use 'tok' or 'avg'."
    )


def explicit_pooler(
    pooler: Any, x: Tensor, key_bias: Tensor | None, probes: list[Tensor] | None
) -> Tensor:
    """open_clip's ``AttentionalPooler`` for its first query, softmax written out.

    Only the first query's output is pooled (``pool_type="tok"``), and queries do not
    interact, so computing that one query alone is exact.

    Args:
        pooler: The ``AttentionalPooler`` (``query``, ``ln_q``, ``ln_k``, ``attn``).
        x: ``(B, T, D)`` tokens after the transformer.
        key_bias: Optional additive ``(B, 1, 1, T)`` mask over the keys.
        probes: List the ``(B, heads, 1, T)`` probabilities are appended to, or ``None``.

    Returns:
        ``(B, 1, D)`` output of the first query.
    """
    mha: nn.MultiheadAttention = pooler.attn
    x = pooler.ln_k(x)
    q = pooler.ln_q(pooler.query[:1])  # (1, D)
    b, t = x.shape[:2]
    h, d = mha.num_heads, mha.embed_dim
    hd = d // h
    if mha.in_proj_weight is not None:
        wq, wk, wv = mha.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    bq, bk, bv = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
    qh = F.linear(q, wq, bq).reshape(1, 1, h, hd).transpose(1, 2)  # (1, H, 1, hd)
    kh = F.linear(x, wk, bk).reshape(b, t, h, hd).transpose(1, 2)  # (B, H, T, hd)
    vh = F.linear(x, wv, bv).reshape(b, t, h, hd).transpose(1, 2)
    scores = (qh * hd**-0.5) @ kh.transpose(-2, -1)  # (B, H, 1, T)
    if key_bias is not None:
        scores = scores + key_bias.to(scores.dtype)
    probs = scores.softmax(dim=-1)
    if probes is not None:
        probes.append(probs)
    out = F.dropout(probs, p=mha.dropout, training=mha.training) @ vh
    return mha.out_proj(out.transpose(1, 2).reshape(b, 1, d))  # type: ignore[no-any-return]


def native_pooled(
    visual: Any, pooling: TokenPooling, tokens: Tensor, key_bias: Tensor | None
) -> Tensor:
    """``visual._pool(tokens)[0]`` with hidden patches left out of the pool too.

    Args:
        visual: open_clip's ``VisionTransformer``.
        pooling: Its :func:`native_pooling` kind.
        tokens: ``(B, T, D)`` output of the transformer.
        key_bias: ``(B, 1, 1, T)`` additive mask of hidden keys, or ``None``.

    Returns:
        ``(B, D)`` pooled embedding before the projection.
    """
    if key_bias is None or pooling == "cls":
        pooled, _ = visual._pool(tokens)
        return pooled  # type: ignore[no-any-return]
    if pooling == "attention":
        return visual.ln_post(explicit_pooler(visual.attn_pool, tokens, key_bias, None))[:, 0]  # type: ignore[no-any-return]
    visible = torch.isfinite(key_bias[:, 0, 0, 1:])
    if visual.final_ln_after_pool:
        return visual.ln_post(masked_mean(tokens[:, 1:], visible))  # type: ignore[no-any-return]
    return masked_mean(visual.ln_post(tokens)[:, 1:], visible)


@contextmanager
def without_patch_dropout(owner: nn.Module, name: str) -> Iterator[None]:
    """Replace ``owner.<name>`` (a patch dropout) by an identity meanwhile."""
    saved = owner._modules.get(name)
    try:
        if saved is not None:
            owner._modules[name] = nn.Identity()
        yield
    finally:
        if saved is not None:
            owner._modules[name] = saved


def pop_trunk_kwargs(model_cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Split ``vision_cfg["timm_model_kwargs"]`` off a model config (open_clip rejects it).

    With such arguments the returned config names timm's tiny ``test_vit`` as the
    trunk, a placeholder that :func:`rebuild_timm_trunk` replaces: open_clip would
    otherwise first build (and initialise) the full-size trunk. The real trunk name
    is kept under ``vision_cfg["_trunk_name"]`` of the returned config's copy passed
    to :func:`rebuild_timm_trunk`.

    Returns:
        The config for open_clip, and the ``vision_cfg`` (with the real trunk name and
        the timm keyword arguments under ``"timm_model_kwargs"``) or ``None``.
    """
    cfg = copy.deepcopy(model_cfg)
    vision = cfg.get("vision_cfg") or {}
    kwargs = vision.pop(TRUNK_KWARGS_KEY, None)
    if kwargs is None:
        return cfg, None
    if not vision.get("timm_model_name"):
        raise ValueError(f"vision_cfg[{TRUNK_KWARGS_KEY!r}] needs a vision_cfg['timm_model_name']")
    real = dict(vision, **{TRUNK_KWARGS_KEY: dict(kwargs)})
    vision["timm_model_name"] = "test_vit"
    return cfg, real


def rebuild_timm_trunk(visual: Any, vision_cfg: dict[str, Any], embed_dim: int) -> None:
    """Rebuild a ``TimmModel``'s trunk (and linear projection) with extra timm arguments.

    open_clip builds the trunk from the name alone, at the model's default image size;
    this builds it as open_clip would, plus ``vision_cfg["timm_model_kwargs"]`` and
    ``img_size`` from ``vision_cfg["image_size"]`` (tiny trunks for tests, other depths or widths).

    Raises:
        ValueError: For an ``"mlp"`` projection or a custom attention pool.
    """
    import timm

    pool = str(vision_cfg.get("timm_pool", "avg"))
    proj = str(vision_cfg.get("timm_proj", "linear"))
    if proj == "mlp" or pool in ("abs_attn", "rot_attn"):
        raise ValueError(f"{TRUNK_KWARGS_KEY} supports timm_proj 'linear'/'none' and timm pools")
    args = dict(vision_cfg[TRUNK_KWARGS_KEY])
    args.setdefault("img_size", vision_cfg.get("image_size", 224))
    if vision_cfg.get("timm_drop_path") is not None:
        args["drop_path_rate"] = vision_cfg["timm_drop_path"]
    if float(vision_cfg.get("patch_dropout", 0.0)) > 0:
        args["patch_drop_rate"] = vision_cfg["patch_dropout"]
    name = str(vision_cfg["timm_model_name"])
    trunk: Any
    if proj == "linear":
        trunk = timm.create_model(name, **args)
        trunk.reset_classifier(0, **({"global_pool": pool} if pool else {}))
        bias = bool(vision_cfg.get("timm_proj_bias", False))
        visual.head.proj = nn.Linear(trunk.num_features, embed_dim, bias=bias)
    else:
        num = 0 if proj == "none" else embed_dim
        trunk = timm.create_model(name, num_classes=num, global_pool=pool, **args)
    visual.trunk = trunk

"""Both adapters' encoders written out by hand from the wrapped library's modules.

Tests compare an adapter's features with these: stem (normalise, patchify, prefix
tokens, position embedding, pre-norm) and encoder (blocks, final norm, pooling).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def normalise(vit: Any, images: Tensor) -> Tensor:
    """Pixel normalisation with the adapter's own mean and std buffers."""
    return (images - vit.mean_buffer) / vit.std_buffer


def timm_tokens(vit: Any, images: Tensor) -> Tensor:
    """timm stem: patchify, prepend CLS (and register tokens), add position, norm_pre."""
    m = vit.model
    x = m.patch_embed.proj(normalise(vit, images)).flatten(2).transpose(1, 2)
    prefix = [m.cls_token.expand(x.shape[0], -1, -1)]
    if m.reg_token is not None:
        prefix.append(m.reg_token.expand(x.shape[0], -1, -1))
    if m.no_embed_class:
        x = torch.cat([*prefix, x + m.pos_embed], dim=1)
    else:
        x = torch.cat([*prefix, x], dim=1) + m.pos_embed
    return m.norm_pre(x)


def timm_feature(vit: Any, tokens: Tensor) -> Tensor:
    """timm encoder: blocks, final norm, CLS token."""
    for blk in vit.model.blocks:
        tokens = blk(tokens)
    return vit.model.norm(tokens)[:, 0]


def clip_tokens(vit: Any, images: Tensor) -> Tensor:
    """open_clip stem: conv patchify, prepend CLS, add position, ln_pre."""
    v = vit.visual
    x = v.conv1(normalise(vit, images)).flatten(2).transpose(1, 2)
    cls = v.class_embedding.expand(x.shape[0], 1, -1)
    return v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding)


def clip_feature(vit: Any, tokens: Tensor) -> Tensor:
    """open_clip encoder: residual blocks, ln_post on CLS, projection."""
    v = vit.visual
    for blk in v.transformer.resblocks:
        tokens = blk(tokens)
    return v.ln_post(tokens[:, 0]) @ v.proj

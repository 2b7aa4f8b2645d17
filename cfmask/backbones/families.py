"""The architecture families cfmask supports, with a tiny random-weight model of each.

:data:`FAMILIES` is the single list behind the coverage test (every family is built,
trained for one objective step, probed, checkpointed and exported) and the
supported-architectures table in the docs (:func:`architectures_table`, run
``python -m cfmask.backbones.families`` to print it). Tiny models keep the family's
own building blocks and pooling and reduce depth and width through the model's own
arguments (timm ``create_model`` keyword arguments; open_clip model configs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cfmask.backbones.base import TokenPooling

__all__ = ("FAMILIES", "REFUSED", "ArchitectureFamily", "architectures_table")

_TINY_TIMM = {"depth": 2, "embed_dim": 32, "num_heads": 2}
_TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
_TINY_VISION = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32}


def _timm(model_name: str, **model_kwargs: Any) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "num_classes": 3,
        "img_size": 32,
        "patch_size": 8,
        "model_kwargs": {**_TINY_TIMM, **model_kwargs},
    }


def _clip(vision: dict[str, Any], embed_dim: int = 32, **extra: Any) -> dict[str, Any]:
    return {
        "model_cfg": {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": dict(_TINY_TEXT)}
        | extra
    }


def _timm_trunk(name: str, pool: str, proj: str, **extra: Any) -> dict[str, Any]:
    vision = {
        "timm_model_name": name,
        "timm_pool": pool,
        "timm_proj": proj,
        "image_size": 32,
        "timm_model_kwargs": {"patch_size": 8, **_TINY_TIMM},
    }
    return _clip(vision, custom_text=True, **extra)


@dataclass(frozen=True)
class ArchitectureFamily:
    """One architecture family and how cfmask supports it.

    Attributes:
        key: Short identifier (test ids).
        library: ``"timm"`` (:class:`~cfmask.backbones.TimmViT`) or ``"open_clip"``
            (:class:`~cfmask.backbones.OpenCLIPViT`).
        examples: Real model names of the family.
        pooling: How the head reads the tokens (and so the relevance readout).
        tiny_args: Constructor arguments of a tiny random-weight model of the family
            (32-px images, 8-px patches; open_clip: without class names/templates).
        token_hiding: Whether patches can be dropped or key-masked (token-drop and
            attention-mask refillers); ``False`` comes with the reason in ``note``.
        export: Whether ``cfmask export`` output loads in the target library for
            the tiny model (real-size named models export like their family).
        note: What else to know.
    """

    key: str
    library: Literal["timm", "open_clip"]
    examples: tuple[str, ...]
    pooling: TokenPooling
    tiny_args: dict[str, Any] = field(repr=False)
    token_hiding: bool = True
    export: bool = True
    note: str = ""


_RELPOS_NOTE = (
    "relative position bias over the full grid: no token dropping or key masking "
    "(pixel refillers only)"
)
_TRUNK_KWARGS_NOTE = (
    "tiny trunk uses cfmask's `timm_model_kwargs`, which open_clip cannot load; "
    "named models export as usual"
)

#: The families, in the order of the docs table.
FAMILIES: tuple[ArchitectureFamily, ...] = (
    ArchitectureFamily(
        "vit_cls",
        "timm",
        ("vit_base_patch32_clip_224", "vit_base_patch16_224", "deit3_small_patch16_224"),
        "cls",
        _timm("vit_base_patch16_clip_224"),
    ),
    ArchitectureFamily(
        "vit_registers",
        "timm",
        ("vit_small_patch14_reg4_dinov2",),
        "cls",
        _timm("vit_small_patch14_reg4_dinov2", init_values=1e-5),
        note="register tokens are prefix tokens, left out of the relevance map",
    ),
    ArchitectureFamily(
        "vit_gap",
        "timm",
        ("vit_medium_patch16_gap_256",),
        "mean",
        _timm("vit_medium_patch16_gap_256"),
        note="no class token",
    ),
    ArchitectureFamily(
        "vit_siglip_map",
        "timm",
        ("vit_base_patch16_siglip_224", "vit_so400m_patch14_siglip_224"),
        "attention",
        _timm("vit_base_patch16_siglip_224"),
        note="AttentionPoolLatent (MAP) head",
    ),
    ArchitectureFamily(
        "eva02",
        "timm",
        ("eva02_small_patch14_224", "eva02_base_patch16_clip_224"),
        "mean",
        _timm("eva02_small_patch14_224"),
        note="rotary embeddings, SwiGLU; the rotary table is gathered at kept patches",
    ),
    ArchitectureFamily(
        "vit_rope",
        "timm",
        ("vit_small_patch16_rope_224", "vit_base_patch16_rope_mixed_224"),
        "cls",
        _timm("vit_small_patch16_rope_224"),
        note="rotary embeddings (timm Eva class)",
    ),
    ArchitectureFamily(
        "vit_rope_gap",
        "timm",
        ("vit_medium_patch16_rope_reg1_gap_256",),
        "mean",
        _timm("vit_medium_patch16_rope_reg1_gap_256"),
        note="rotary embeddings, register token, average pooling",
    ),
    ArchitectureFamily(
        "beit",
        "timm",
        ("beit_base_patch16_224", "beitv2_base_patch16_224"),
        "mean",
        _timm("beit_base_patch16_224"),
        token_hiding=False,
        note=_RELPOS_NOTE,
    ),
    ArchitectureFamily(
        "vit_relpos",
        "timm",
        ("vit_relpos_small_patch16_224", "vit_relpos_medium_patch16_cls_224"),
        "mean",
        _timm("vit_relpos_small_patch16_224"),
        token_hiding=False,
        note=_RELPOS_NOTE,
    ),
    ArchitectureFamily(
        "clip_vit",
        "open_clip",
        ("ViT-B-32", "ViT-B-16", "ViT-B-32-quickgelu", "ViT-B-16-plus-240"),
        "cls",
        _clip(dict(_TINY_VISION)),
    ),
    ArchitectureFamily(
        "clip_vit_avg",
        "open_clip",
        ("any vision_cfg with pool_type='avg'",),
        "mean",
        _clip(dict(_TINY_VISION, pool_type="avg")),
    ),
    ArchitectureFamily(
        "coca",
        "open_clip",
        ("coca_ViT-B-32", "coca_ViT-L-14"),
        "attention",
        _clip(
            dict(_TINY_VISION, attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4)
        ),
        note="attentional pooler; the first query's output is the embedding",
    ),
    ArchitectureFamily(
        "siglip",
        "open_clip",
        ("ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP", "ViT-B-16-SigLIP2"),
        "attention",
        _timm_trunk("vit_base_patch16_siglip_224", "map", "none", init_logit_bias=-10.0),
        export=False,
        note="timm trunk with MAP head; head keeps SigLIP's logit bias. " + _TRUNK_KWARGS_NOTE,
    ),
    ArchitectureFamily(
        "eva_clip",
        "open_clip",
        ("EVA02-B-16", "EVA02-L-14"),
        "cls",
        _timm_trunk("eva02_base_patch16_clip_224", "token", "linear"),
        export=False,
        note="timm Eva trunk with rotary embeddings. " + _TRUNK_KWARGS_NOTE,
    ),
    ArchitectureFamily(
        "timm_trunk_named",
        "open_clip",
        ("a registered timm trunk, here timm's `test_vit` (160 px) with a MAP head",),
        "attention",
        _clip(
            {
                "timm_model_name": "test_vit",
                "timm_pool": "map",
                "timm_proj": "none",
                "image_size": 160,
            },
            embed_dim=64,
            custom_text=True,
            init_logit_bias=-10.0,
        ),
        note="export round trip through open_clip's own timm-trunk builder",
    ),
)

#: Families refused when the adapter is built, with the reason (docs table).
REFUSED: tuple[tuple[str, str], ...] = (
    (
        "deit_*_distilled_* (timm)",
        "prediction averages a class-token head and a distillation-token head",
    ),
    (
        "timm global_pool='max'/'avgmax'/'' or avg including prefix tokens",
        "no attention-rollout readout of that pooling",
    ),
    (
        "open_clip attentional pool with attn_pooler_contrastive / pool_type='avg'",
        "pooled vector mixes several pools or skips query 0",
    ),
    (
        "other timm models (Swin, ConvNeXt, hybrid, ...) and open_clip's ConvNeXt towers",
        "no global self-attention blocks with timm's attention module",
    ),
)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def architectures_table() -> str:
    """The supported-architectures table (Markdown) built from :data:`FAMILIES`."""
    lines = [
        "| Family | Library | Examples | Pooling (relevance readout) | Token drop / key mask "
        "| Export loads | Notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in FAMILIES:
        examples = ", ".join(f"`{e}`" if " " not in e else e for e in f.examples)
        lines.append(
            f"| {f.key} | {f.library} | {examples} | {f.pooling} | {_yes_no(f.token_hiding)} "
            f"| {_yes_no(f.export)} | {f.note} |"
        )
    lines += ["", "Refused when the backbone is built, with this reason in the error:", ""]
    lines += ["| Architecture | Reason |", "|---|---|"]
    lines += [f"| {name} | {reason} |" for name, reason in REFUSED]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(architectures_table(), end="")

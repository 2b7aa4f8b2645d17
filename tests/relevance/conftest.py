"""Tiny backbones shared by the backbone tests (milliseconds per forward pass)."""

from __future__ import annotations

import math
from typing import Any

import pytest

TIMM_ARGS: dict[str, Any] = {
    "model_name": "vit_tiny_patch16_224",
    "num_classes": 10,
    "img_size": 32,
    "patch_size": 8,
    "model_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2},
}

CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "init_logit_scale": math.log(100.0),
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLASS_NAMES = ["cat", "dog", "bird"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture
def timm_args() -> dict[str, Any]:
    return {**TIMM_ARGS, "model_kwargs": dict(TIMM_ARGS["model_kwargs"])}


@pytest.fixture
def clip_args(tmp_path: Any) -> dict[str, Any]:
    return {
        "model_name": "tiny-clip",
        "model_cfg": {k: (dict(v) if isinstance(v, dict) else v) for k, v in CLIP_CFG.items()},
        "class_names": list(CLASS_NAMES),
        "templates": list(TEMPLATES),
        "text_cache_dir": str(tmp_path / "text-cache"),
    }

"""Suite-wide settings: offline hubs, quiet deprecations, deterministic seeds."""

from __future__ import annotations

import math
import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine
# two threads per process can slow a step by orders of magnitude.
torch.set_num_threads(1)

TINY_VIT = {
    "model_name": "vit_tiny_patch16_224",
    "num_classes": 3,
    "img_size": 32,
    "patch_size": 8,
    "model_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2},
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_timm_config() -> dict[str, object]:
    """Init args of a 2-block, 32-px timm ViT with 3 classes (a few thousand parameters)."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_VIT.items()}


# Backbone and relevance tests: a 2-block timm ViT and a 2-block open_clip CLIP.
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
    """Init args of a 2-block, 64-wide timm ViT with 10 classes."""
    return {**TIMM_ARGS, "model_kwargs": dict(TIMM_ARGS["model_kwargs"])}


@pytest.fixture
def clip_args(tmp_path: Any) -> dict[str, Any]:
    """Init args of a tiny open_clip CLIP with a 3-class zero-shot head (cache in tmp_path)."""
    return {
        "model_name": "tiny-clip",
        "model_cfg": {k: (dict(v) if isinstance(v, dict) else v) for k, v in CLIP_CFG.items()},
        "class_names": list(CLASS_NAMES),
        "templates": list(TEMPLATES),
        "text_cache_dir": str(tmp_path / "text-cache"),
    }

"""Suite-wide settings: offline hubs, quiet deprecations, deterministic seeds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

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

"""Suite-wide settings: offline hubs, quiet deprecations, deterministic seeds."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import pytest
import torch

from cfmask.testing import tiny_clip_args, tiny_timm_args

# Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine
# two threads per process can slow a step by orders of magnitude.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_timm_config() -> dict[str, Any]:
    """Init args of a 2-block, 32-px timm ViT with 3 classes (``tiny_timm_args()``)."""
    return tiny_timm_args()


@pytest.fixture
def timm_args() -> dict[str, Any]:
    """Init args of a 2-block, 64-wide timm ViT with 10 classes (backbone and relevance tests)."""
    return tiny_timm_args(10, embed_dim=64)


@pytest.fixture
def clip_args(tmp_path: Any) -> dict[str, Any]:
    """Init args of a tiny open_clip CLIP with a 3-class zero-shot head (cache in tmp_path)."""
    return tiny_clip_args(tmp_path / "text-cache")

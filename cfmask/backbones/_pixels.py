"""Pixel normalisation shared by the ViT adapters.

Adapters take ``[0, 1]`` pixels and normalise them inside with the per-channel mean
and std of their weights' preprocessing (:class:`~cfmask.backbones.base.DataConfig`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cfmask.backbones.base import DataConfig

__all__ = ("register_normalisation", "rgb_triple")


def rgb_triple(values: Any) -> tuple[float, float, float]:
    """Return three per-channel (RGB) values as floats.

    Args:
        values: Any iterable of three numbers (a tuple, a list from YAML, ...).

    Returns:
        The three values as a tuple of floats.

    Raises:
        ValueError: If there are not exactly three values.
    """
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ValueError(f"mean/std must have 3 values (RGB), got {vals}")
    return vals[0], vals[1], vals[2]


def register_normalisation(module: nn.Module, config: DataConfig) -> None:
    """Register ``config``'s mean and std as ``(1, 3, 1, 1)`` buffers on ``module``.

    The buffers, ``mean_buffer`` and ``std_buffer``, are not persistent: they are
    derived from the constructor arguments, so checkpoints do not store them.

    Args:
        module: The adapter.
        config: Its data configuration.
    """
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    module.register_buffer("mean_buffer", mean, persistent=False)
    module.register_buffer(
        "std_buffer", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False
    )

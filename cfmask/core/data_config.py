"""How images must be prepared for a backbone: shared by the data and the model layers.

A backbone adapter reports its :class:`DataConfig`
(:attr:`cfmask.backbones.base.VisionBackbone.data_config`) and the data transforms
(:func:`cfmask.data.transforms.transforms_from_config`) follow it; the class lives
below both so that neither layer imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("DataConfig",)


@dataclass(frozen=True)
class DataConfig:
    """How images must be prepared for a backbone (before its own normalisation).

    Attributes:
        image_size: Side of the square input, in pixels (224 for CLIP ViTs).
        interpolation: Resize interpolation, ``"bicubic"`` or ``"bilinear"``.
        mean: Per-channel mean the backbone subtracts internally.
        std: Per-channel std the backbone divides by internally.
    """

    image_size: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

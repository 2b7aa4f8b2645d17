"""Image transforms resolved from a backbone's :class:`~cfmask.backbones.base.DataConfig`.

Pixels stay in ``[0, 1]``: backbones normalise inside their forward pass, so
no transform here ever applies ``Normalize``. The evaluation transform is the
reference's ``Resize(size, bicubic)`` → ``CenterCrop(size)`` → ``ToTensor``
(Resize to the crop size, not to 256; reference notes §5.2). The reference
trains with the same transform (no augmentation, §0 item 7).
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from cfmask.core.data_config import DataConfig

__all__ = ("INTERPOLATIONS", "eval_transform", "train_transform", "transforms_from_config")

#: Accepted interpolation names.
INTERPOLATIONS: dict[str, T.InterpolationMode] = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
    "lanczos": T.InterpolationMode.LANCZOS,
}

ImageTransform = Callable[[Image.Image], Tensor]


def _mode(interpolation: str) -> T.InterpolationMode:
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; choose one of {sorted(INTERPOLATIONS)}"
        ) from None


def eval_transform(image_size: int = 224, interpolation: str = "bicubic") -> ImageTransform:
    """Deterministic evaluation transform: resize the short side, centre-crop, to tensor.

    Args:
        image_size: Side of the square output.
        interpolation: Resize interpolation (see :data:`INTERPOLATIONS`).

    Returns:
        A callable mapping an RGB PIL image to a ``(3, image_size, image_size)``
        float tensor in ``[0, 1]``.

    Example:
        >>> from PIL import Image
        >>> eval_transform(32)(Image.new("RGB", (64, 48))).shape
        torch.Size([3, 32, 32])
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return T.Compose(  # type: ignore[no-any-return]
        [
            T.Resize(image_size, interpolation=_mode(interpolation)),
            T.CenterCrop(image_size),
            T.ToTensor(),
        ]
    )


def train_transform(
    image_size: int = 224, interpolation: str = "bicubic", augment: bool = False
) -> ImageTransform:
    """Training transform: the evaluation transform, or light augmentation if asked.

    Args:
        image_size: Side of the square output.
        interpolation: Resize interpolation.
        augment: ``False`` (reference default) reuses :func:`eval_transform`;
            ``True`` uses WiSE-FT's ``RandomResizedCrop(scale=(0.9, 1.0))``.

    Returns:
        A callable mapping an RGB PIL image to a ``(3, image_size, image_size)``
        float tensor in ``[0, 1]``.
    """
    if not augment:
        return eval_transform(image_size, interpolation)
    return T.Compose(  # type: ignore[no-any-return]
        [
            T.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=_mode(interpolation)),
            T.ToTensor(),
        ]
    )


def transforms_from_config(
    config: DataConfig, augment: bool = False
) -> tuple[ImageTransform, ImageTransform]:
    """Build ``(train, eval)`` transforms from a backbone's data config.

    Args:
        config: The backbone's :attr:`~cfmask.backbones.base.VisionBackbone.data_config`.
        augment: See :func:`train_transform`.

    Returns:
        The training and evaluation transforms.
    """
    return (
        train_transform(config.image_size, config.interpolation, augment),
        eval_transform(config.image_size, config.interpolation),
    )

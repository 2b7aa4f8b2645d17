"""Ground-truth object masks stored next to class-folder images.

A dataset with segmentation masks can give the masker the object's exact
pixels instead of a class activation map's estimate (the exact-mask
counterpart of the CAM-based object masks of Xiao et al., CVPR 2023, Sec. 3.2).
A masks folder mirrors the images folder: the image ``<images>/<rel>/<stem>.<ext>``
has its mask at ``<masks>/<rel>/<stem>.png``. A mask is a single-channel image of
the image's size in which every nonzero pixel belongs to the object.

Masks must see exactly the geometric steps their image sees, with nearest-
neighbour resampling so they stay binary: :class:`ImageMaskTransform` reads the
steps of the image transform and applies each one, with the same random draw,
to both. It works on PIL images with torchvision's functional operations, so
the image it returns is bit-identical to what the image transform alone returns
(same random numbers drawn in the same order), and the mask is resampled with
PIL's nearest-neighbour filter, whose pixel-centre convention is the one PIL's
bicubic and bilinear filters use. (A tensor mask resized with torch's
``nearest`` mode would sit up to half a source pixel off a PIL-resized image.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as F

from cfmask.data.errors import CorruptImageError

__all__ = (
    "MASK_SUFFIX",
    "ImageMaskTransform",
    "ObjectMaskError",
    "load_mask",
    "mask_path",
    "mask_to_tensor",
    "missing_masks",
)

#: File suffix of every mask. Masks are lossless PNG files, because a JPEG's
#: compression noise would add object pixels around every edge.
MASK_SUFFIX = ".png"

#: PIL modes of single-channel images (``P``: palette indices, read as they are).
_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class ObjectMaskError(ValueError):
    """An object mask exists but cannot serve its image (wrong size, several channels)."""


def mask_path(image: Path, image_root: Path, mask_root: Path) -> Path:
    """Where the mask of ``image`` lives: same path below ``mask_root``, suffix ``.png``.

    Args:
        image: An image file below ``image_root``.
        image_root: The folder the masks folder mirrors.
        mask_root: The masks folder.

    Returns:
        ``mask_root / <image relative to image_root, with suffix .png>``.

    Example:
        >>> str(mask_path(Path("d/train/cat/01.jpg"), Path("d"), Path("m")))
        'm/train/cat/01.png'
    """
    return mask_root / image.relative_to(image_root).with_suffix(MASK_SUFFIX)


def missing_masks(pairs: Sequence[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """The ``(image, mask)`` pairs whose mask file does not exist.

    Args:
        pairs: ``(image path, expected mask path)`` of every sample.

    Returns:
        The pairs without a mask file, in the given order.
    """
    return [(image, mask) for image, mask in pairs if not mask.is_file()]


def load_mask(path: Path) -> Image.Image:
    """Decode a mask file into a binary ``L``-mode image (255: object, 0: background).

    Every nonzero value counts as object, whatever the mode: in a palette (``P``)
    PNG that is every nonzero palette index (PASCAL VOC's 255 "void" border
    included; map such values to 0 first if they are not object).

    Args:
        path: A single-channel image file.

    Returns:
        The mask, of the file's size.

    Raises:
        CorruptImageError: If the file cannot be decoded; names the file.
        ObjectMaskError: If the image has several channels (``RGB``, ``LA``, …).
    """
    try:
        with Image.open(path) as img:
            if img.mode not in _SINGLE_CHANNEL_MODES:
                raise ObjectMaskError(
                    f"object mask {path} has mode {img.mode!r} ({len(img.getbands())} "
                    "channels); a mask must be a single-channel image whose nonzero pixels "
                    "are the object. Save it as a grayscale ('L') or 1-bit PNG."
                )
            values = np.array(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if isinstance(err, ObjectMaskError):
            raise
        raise CorruptImageError(f"cannot decode object mask {path}: {err}") from err
    return Image.fromarray(np.where(values != 0, 255, 0).astype(np.uint8))


def mask_to_tensor(mask: Image.Image) -> Tensor:
    """The ``(H, W)`` bool tensor of a mask image (nonzero: object).

    Args:
        mask: A single-channel mask image.

    Returns:
        ``True`` where the mask is nonzero.
    """
    return torch.from_numpy(np.array(mask) != 0)


_NEAREST = F.InterpolationMode.NEAREST
_SUPPORTED = (T.Resize, T.CenterCrop, T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor)


class ImageMaskTransform:
    """Apply an image transform to an image and, step by step, to its object mask.

    Every geometric step of ``image_transform`` (resize, centre crop, random
    resized crop, horizontal flip) moves the mask exactly as it moves the
    image, with one random draw shared by both; the mask is resampled with
    nearest-neighbour interpolation so it stays binary. ``ToTensor`` applies
    to the image only; the mask always comes out as a bool tensor.

    Args:
        image_transform: A ``torchvision.transforms.Compose`` (or one step)
            made of ``Resize``, ``CenterCrop``, ``RandomResizedCrop``,
            ``RandomHorizontalFlip`` and ``ToTensor``, as
            :func:`~cfmask.data.transforms.train_transform` and
            :func:`~cfmask.data.transforms.eval_transform` build.

    Raises:
        ValueError: If a step is not one of those; the message names it.

    Example:
        >>> from cfmask.data.transforms import eval_transform
        >>> image, mask = Image.new("RGB", (64, 48)), Image.new("L", (64, 48), 255)
        >>> x, m = ImageMaskTransform(eval_transform(32))(image, mask)
        >>> tuple(x.shape), tuple(m.shape), m.dtype, bool(m.all())
        ((3, 32, 32), (32, 32), torch.bool, True)
    """

    def __init__(self, image_transform: Callable[[Image.Image], Any]) -> None:
        steps = (
            list(image_transform.transforms)
            if isinstance(image_transform, T.Compose)
            else [image_transform]
        )
        unknown = [s for s in steps if not isinstance(s, _SUPPORTED)]
        if unknown:
            raise ValueError(
                f"cannot move object masks through {', '.join(repr(s) for s in unknown)}: "
                f"with masks, the image transform may only use "
                f"{', '.join(t.__name__ for t in _SUPPORTED)}."
            )
        self.steps: list[Any] = steps

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Any, Tensor]:
        """Transform ``image`` and ``mask`` (same size) alike.

        Args:
            image: RGB image.
            mask: Binary ``L`` mask of the image's size (see :func:`load_mask`).

        Returns:
            ``(transformed image, (H, W) bool mask)`` where ``H, W`` are the
            transformed image's height and width.
        """
        out: Any = image
        for step in self.steps:
            if isinstance(step, T.RandomResizedCrop):
                top, left, h, w = step.get_params(out, step.scale, step.ratio)
                out = F.resized_crop(
                    out, top, left, h, w, step.size, step.interpolation, antialias=step.antialias
                )
                mask = F.resized_crop(mask, top, left, h, w, step.size, _NEAREST)
            elif isinstance(step, T.Resize):
                out = step(out)
                mask = F.resize(mask, step.size, _NEAREST, step.max_size)
            elif isinstance(step, T.RandomHorizontalFlip):
                if torch.rand(1) < step.p:  # the draw RandomHorizontalFlip makes
                    out, mask = F.hflip(out), F.hflip(mask)
            elif isinstance(step, T.CenterCrop):
                out, mask = step(out), step(mask)
            else:  # ToTensor
                out = step(out)
        return out, mask_to_tensor(mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.steps!r})"

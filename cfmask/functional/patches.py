"""Pure functions that relate patch masks to pixels.

A patch mask is a ``torch.bool`` tensor of shape ``(B, N)`` over the patch tokens
of a ViT, in row-major order over the ``(h, w)`` patch grid, with ``N = h * w``
and ``True`` meaning "replace this patch". These helpers turn such a mask into a
pixel mask, check that images fit the patch grid, and measure how much of each
patch a pixel-space object mask covers.

References:
    [0] Xiao et al., *Masked Images Are Counterfactual Samples for Robust
    Fine-tuning*, CVPR 2023, arXiv:2303.03052 (Sec. 3.2: patches are masked and
    refilled on the ViT patch grid).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = (
    "check_grid",
    "check_object_masks",
    "check_patch_mask",
    "mask_overlap_rates",
    "patch_coverage",
    "patch_mask_to_pixels",
)


def check_grid(images: Tensor, patch_size: int) -> tuple[int, int]:
    """Return the patch grid of a batch of images.

    Args:
        images: ``(B, C, H, W)`` batch.
        patch_size: Side of one square patch, in pixels.

    Returns:
        ``(h, w) = (H // patch_size, W // patch_size)``.

    Raises:
        ValueError: If ``images`` is not 4-D, ``patch_size`` is not positive, or
            ``H`` or ``W`` is not a multiple of ``patch_size``.

    Example:
        >>> import torch
        >>> check_grid(torch.zeros(2, 3, 32, 48), patch_size=16)
        (2, 3)
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be a positive number of pixels, got {patch_size}")
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}; "
            f"resize or crop the images to a multiple of {patch_size} pixels on each side "
            f"(e.g. the backbone's data_config.image_size)."
        )
    return height // patch_size, width // patch_size


def check_patch_mask(images: Tensor, mask: Tensor, patch_size: int) -> tuple[int, int]:
    """Check that a patch mask fits a batch of images and return the patch grid.

    Args:
        images: ``(B, C, H, W)`` batch.
        mask: ``(B, N)`` bool patch mask with ``N = (H // patch_size) * (W // patch_size)``.
        patch_size: Side of one square patch, in pixels.

    Returns:
        The patch grid ``(h, w)``.

    Raises:
        ValueError: If the images do not fit the patch size, the mask is not
            ``torch.bool``, or its shape is not ``(B, h * w)``.

    Example:
        >>> import torch
        >>> check_patch_mask(torch.zeros(2, 3, 8, 8), torch.zeros(2, 4, dtype=torch.bool), 4)
        (2, 2)
    """
    grid = check_grid(images, patch_size)
    if mask.dtype != torch.bool:
        raise ValueError(
            f"the patch mask must be a torch.bool tensor (True = replace), got {mask.dtype}; "
            f"convert it with mask.bool() or build it with a comparison."
        )
    expected = (images.shape[0], grid[0] * grid[1])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"the patch mask has shape {tuple(mask.shape)} but images of shape "
            f"{tuple(images.shape)} with patch size {patch_size} need (B, N) = {expected} "
            f"(a {grid[0]}x{grid[1]} grid, row-major, prefix tokens excluded)."
        )
    return grid


def check_object_masks(images: Tensor, object_masks: Tensor, owner: str) -> None:
    """Check that object masks have the ``(B, H, W)`` of a ``(B, C, H, W)`` batch.

    Args:
        images: ``(B, C, H, W)`` batch.
        object_masks: Masks that must be ``(B, H, W)``.
        owner: Name of the component that needs the masks (for the message).

    Raises:
        ValueError: If the shapes differ; the message names both shapes and the fix.

    Example:
        >>> import torch
        >>> check_object_masks(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8), "demo")
    """
    expected = (images.shape[0], *images.shape[-2:])
    if tuple(object_masks.shape) != expected:
        raise ValueError(
            f"{owner} expected object masks of shape (B, H, W) = {expected} to match "
            f"images of shape {tuple(images.shape)}, got {tuple(object_masks.shape)}; "
            "resize and crop the masks exactly like the images."
        )


def patch_mask_to_pixels(mask: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """Upsample a patch mask to pixels by nearest-neighbour repetition.

    Each patch becomes one ``patch_size x patch_size`` block, exactly as the
    reference code does with ``TF.resize(..., InterpolationMode.NEAREST)``, so pixel
    masks are always patch-aligned.

    Args:
        mask: ``(B, N)`` bool patch mask, row-major over the grid, ``True`` = replace.
        grid: Patch grid ``(h, w)`` with ``N = h * w``.
        patch_size: Side of one square patch, in pixels.

    Returns:
        ``(B, 1, h * patch_size, w * patch_size)`` bool pixel mask, broadcastable
        over the channels of a ``(B, C, H, W)`` batch.

    Raises:
        ValueError: If ``mask`` is not 2-D with ``N = h * w`` columns.

    Example:
        >>> import torch
        >>> mask = torch.tensor([[True, False, False, True]])
        >>> patch_mask_to_pixels(mask, (2, 2), patch_size=2)[0, 0].int()
        tensor([[1, 1, 0, 0],
                [1, 1, 0, 0],
                [0, 0, 1, 1],
                [0, 0, 1, 1]], dtype=torch.int32)
    """
    h, w = grid
    if mask.ndim != 2 or mask.shape[1] != h * w:
        raise ValueError(
            f"expected a (B, N) patch mask with N = {h}*{w} = {h * w}, "
            f"got shape {tuple(mask.shape)}."
        )
    batch = mask.shape[0]
    blocks = mask.reshape(batch, 1, h, 1, w, 1)
    blocks = blocks.expand(batch, 1, h, patch_size, w, patch_size)
    return blocks.reshape(batch, 1, h * patch_size, w * patch_size)


def patch_coverage(object_masks: Tensor, patch_size: int) -> Tensor:
    """Fraction of each patch covered by a pixel-space object mask.

    The ground-truth counterpart of a relevance map: where the paper derives the
    object patches from a class activation map ([0], Sec. 3.2), a dataset with
    segmentation masks gives them exactly. Each patch's value is the mean of the
    mask over its ``patch_size x patch_size`` pixels.

    Args:
        object_masks: ``(B, H, W)`` object masks, ``torch.bool`` or float in
            ``[0, 1]`` (soft masks are averaged as they are).
        patch_size: Side of one square patch, in pixels.

    Returns:
        ``(B, N)`` float coverage in ``[0, 1]``, ``N = (H // patch_size) *
        (W // patch_size)``, row-major over the patch grid (the order of patch masks).

    Raises:
        ValueError: If ``object_masks`` is not 3-D, ``patch_size`` is not positive,
            ``H`` or ``W`` is not a multiple of ``patch_size``, or a float mask has
            values outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> masks[0, :2, :3] = True
        >>> patch_coverage(masks, patch_size=2)
        tensor([[1.0000, 0.5000, 0.0000, 0.0000]])
    """
    if object_masks.ndim != 3:
        raise ValueError(
            f"expected object masks of shape (B, H, W), got {tuple(object_masks.shape)}; "
            f"squeeze a channel dimension of size 1 (masks[:, 0]) if there is one."
        )
    if patch_size < 1:
        raise ValueError(f"patch_size must be a positive number of pixels, got {patch_size}")
    batch, height, width = object_masks.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"object mask size {height}x{width} is not divisible by the patch size "
            f"{patch_size}; resize or crop the masks like the images, to a multiple of "
            f"{patch_size} pixels on each side."
        )
    if object_masks.dtype == torch.bool:
        values = object_masks.float()
    elif object_masks.is_floating_point():
        values = object_masks.float()
        if values.numel() and (values.min() < 0 or values.max() > 1):
            raise ValueError(
                f"float object masks must lie in [0, 1], got values in "
                f"[{values.min().item()}, {values.max().item()}]; divide 0/255 masks by 255."
            )
    else:
        raise ValueError(
            f"object masks must be torch.bool or float in [0, 1], got {object_masks.dtype}; "
            f"convert label maps with (masks > 0)."
        )
    h, w = height // patch_size, width // patch_size
    blocks = values.reshape(batch, h, patch_size, w, patch_size)
    return blocks.mean(dim=(2, 4)).reshape(batch, h * w)


def mask_overlap_rates(pixel_masks: Tensor, object_masks: Tensor) -> Tensor:
    """Image masking rate, object masking rate and IoU of masks against objects.

    The three measures of the paper's Table 2 ([0], Sec. 4.2 and Appendix A.2),
    per image, with ``M`` the masked pixels, ``O`` the object pixels and ``I`` all
    pixels: image MR ``n(M) / n(I)``, object MR ``n(M and O) / n(O)`` and IoU
    ``n(M and O) / n(M or O)``.

    Args:
        pixel_masks: ``(B, H, W)`` bool masked pixels (for a patch mask, the output of
            :func:`patch_mask_to_pixels` with its channel squeezed).
        object_masks: ``(B, H, W)`` bool ground-truth object pixels.

    Returns:
        ``(B, 3)`` float64: image MR, object MR and IoU. The object MR is NaN for an
        image without object pixels, the IoU is NaN when both masks are empty.

    Raises:
        ValueError: If the two masks are not bool tensors of the same ``(B, H, W)`` shape.

    Example:
        >>> import torch
        >>> masked = torch.tensor([[[True, True], [False, False]]])
        >>> objects = torch.tensor([[[True, False], [True, False]]])
        >>> mask_overlap_rates(masked, objects)
        tensor([[0.5000, 0.5000, 0.3333]], dtype=torch.float64)
    """
    if pixel_masks.ndim != 3 or pixel_masks.shape != object_masks.shape:
        raise ValueError(
            f"expected masked pixels and object masks of the same (B, H, W) shape, got "
            f"{tuple(pixel_masks.shape)} and {tuple(object_masks.shape)}; bring the object "
            "masks to the image size first."
        )
    if pixel_masks.dtype != torch.bool or object_masks.dtype != torch.bool:
        raise ValueError(
            f"expected bool masks, got {pixel_masks.dtype} and {object_masks.dtype}; "
            "threshold soft masks first (e.g. masks >= 0.5)."
        )
    masked = pixel_masks.flatten(1)
    objects = object_masks.flatten(1)
    n_masked = masked.sum(1, dtype=torch.float64)
    n_object = objects.sum(1, dtype=torch.float64)
    inter = (masked & objects).sum(1, dtype=torch.float64)
    union = (masked | objects).sum(1, dtype=torch.float64)
    image_mr = n_masked / masked.shape[1]
    nan = torch.full_like(inter, float("nan"))
    object_mr = torch.where(n_object > 0, inter / n_object.clamp(min=1), nan)
    iou = torch.where(union > 0, inter / union.clamp(min=1), nan)
    return torch.stack([image_mr, object_mr, iou], dim=1)

"""Pictures of what the counterfactual objective does to a batch.

Pure functions that turn a batch, its patch relevance, its patch mask and its
counterfactual view (Xiao et al., CVPR 2023, arXiv:2303.03052, Sec. 3.2 and
Fig. 2) into one image grid: a row of the images, a row of relevance maps, a row
with the masked patches tinted, and a row of the counterfactual images. The
:class:`~cfmask.training.callbacks.CounterfactualImageLogger` callback logs that grid
during training.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import make_grid

from cfmask.functional.patches import patch_mask_to_pixels
from cfmask.masking.base import Counterfactual

__all__ = ("MASK_TINT", "counterfactual_grid", "hidden_patch_mask")

#: Colour ``(R, G, B)`` that marks the masked patches in the mask row.
MASK_TINT = (1.0, 0.1, 0.1)


def hidden_patch_mask(cf: Counterfactual, num_patches: int) -> Tensor | None:
    """The ``(B, N)`` patches a "no-fill" counterfactual hides inside the backbone.

    Args:
        cf: A counterfactual from a :class:`~cfmask.masking.Refiller`.
        num_patches: ``N``.

    Returns:
        ``True`` where a patch is dropped (``keep_index``) or hidden as an attention
        key (``key_mask``); ``None`` for pixel-space counterfactuals.
    """
    if cf.key_mask is not None:
        return cf.key_mask.bool()
    if cf.keep_index is not None:
        hidden = torch.ones(
            cf.keep_index.shape[0], num_patches, dtype=torch.bool, device=cf.keep_index.device
        )
        return hidden.scatter(1, cf.keep_index.long(), False)
    return None


def counterfactual_grid(
    images: Tensor,
    mask: Tensor | None,
    cf: Counterfactual,
    grid_size: tuple[int, int],
    patch_size: int,
    scores: Tensor | None = None,
    padding: int = 2,
) -> Tensor:
    """One picture of a batch: images, relevance, mask and counterfactual, one row each.

    Rows, each with one column per image: the images; the relevance scores as a
    grey-level map (white = relevant; only when ``scores`` is given); the images
    with the masked patches tinted red; the counterfactual images, with patches
    that a "no-fill" refiller hides inside the backbone shown black.

    Args:
        images: ``(B, 3, H, W)`` pixels in ``[0, 1]``.
        mask: ``(B, N)`` bool patch mask (``True`` = replaced), or ``None`` when no
            masker ran (then the mask row is the plain images).
        cf: The counterfactual view of ``images``.
        grid_size: Patch grid ``(h, w)`` with ``H = h * patch_size``.
        patch_size: Side of a patch in pixels.
        scores: Optional ``(B, N)`` relevance in ``[0, 1]``.
        padding: Pixels between the cells (white).

    Returns:
        ``(3, rows * (H + padding) + padding, B * (W + padding) + padding)`` float
        image in ``[0, 1]``.
    """
    images = images.detach().float().clamp(0, 1).cpu()
    rows = [images]
    if scores is not None:
        # nearest-neighbour blocks, as for masks: one grey level per patch
        heat = patch_mask_to_pixels(
            scores.detach().float().cpu().clamp(0, 1), grid_size, patch_size
        )
        rows.append(heat.expand(-1, 3, -1, -1))
    if mask is not None:
        where = patch_mask_to_pixels(mask.detach().cpu(), grid_size, patch_size).float()
        tint = torch.tensor(MASK_TINT).view(1, 3, 1, 1)
        rows.append(images * (1 - 0.6 * where) + tint * 0.6 * where)
    else:
        rows.append(images)
    counterfactual = cf.images.detach().float().clamp(0, 1).cpu()
    hidden = hidden_patch_mask(cf, grid_size[0] * grid_size[1])
    if hidden is not None:
        shown = ~patch_mask_to_pixels(hidden.cpu(), grid_size, patch_size)
        counterfactual = counterfactual * shown.float()
    rows.append(counterfactual)
    cells = torch.cat(rows)
    grid: Tensor = make_grid(cells, nrow=images.shape[0], padding=padding, pad_value=1.0)
    return grid

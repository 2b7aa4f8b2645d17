"""Pure functions behind the maskers and refillers.

Conventions: a patch mask is ``torch.bool`` of shape ``(B, N)``, row-major over the
patch grid, ``True`` = replace; relevance scores are float ``(B, N)``; pixels are
in ``[0, 1]``. Random functions take an optional :class:`torch.Generator`; without
one they draw from torch's global generator of the target device.

References:
    [0] Xiao et al., *Masked Images Are Counterfactual Samples for Robust
    Fine-tuning*, CVPR 2023, arXiv:2303.03052, Sec. 3.2 (masking by class
    activation map or at random; refilling from one or many other images).
    The reference implementation (``Coxy7/robust-finetuning``,
    ``utils/masking.py``) fixes the details reproduced here: max-normalisation
    without min subtraction, a strict ``>`` threshold, ``randperm`` single-image
    donors, ``(i + U{1..B-1}) mod B`` multi-image donors, and an exact keep count
    for token dropping.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cfmask.functional.patches import check_patch_mask

__all__ = (
    "keep_index_from_mask",
    "multi_image_donors",
    "normalize_by_max",
    "random_keep_count_mask",
    "random_patch_mask",
    "refill_from_donors",
    "single_image_donors",
    "threshold_mask",
)


def _target_device(
    generator: torch.Generator | None, device: torch.device | str | None
) -> torch.device:
    if device is not None:
        return torch.device(device)
    if generator is not None:
        return generator.device
    return torch.device("cpu")


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")


def normalize_by_max(scores: Tensor, eps: float = 1e-8) -> Tensor:
    """Divide each row of relevance scores by its maximum.

    This is the reference normalisation of the class activation map: ``cam /
    (cam.max() + eps)`` per image, with **no** subtraction of the minimum, so a
    non-negative map keeps its floor (reference-behaviour §1.2). The arg-max patch
    of each row maps to ``max / (max + eps)``, just below 1.

    Args:
        scores: ``(B, N)`` non-negative relevance scores.
        eps: Added to the maximum to avoid a division by zero on all-zero rows.

    Returns:
        ``(B, N)`` scores with each row's maximum just below 1.

    Raises:
        ValueError: If ``scores`` is not 2-D.

    Example:
        >>> import torch
        >>> normalize_by_max(torch.tensor([[1.0, 2.0, 4.0]]), eps=0.0)
        tensor([[0.2500, 0.5000, 1.0000]])
    """
    if scores.ndim != 2:
        raise ValueError(f"expected (B, N) scores, got shape {tuple(scores.shape)}")
    return scores / (scores.amax(dim=1, keepdim=True) + eps)


def threshold_mask(scores: Tensor, threshold: float) -> Tensor:
    """Mask the patches whose score is strictly above a threshold.

    The reference object mask is ``cam > threshold``; a score equal to the
    threshold is **not** masked. The context mask is the complement,
    ``~threshold_mask(scores, threshold)``.

    Args:
        scores: ``(B, N)`` scores, usually from :func:`normalize_by_max`.
        threshold: Scores ``> threshold`` are masked.

    Returns:
        ``(B, N)`` bool mask, ``True`` = replace.

    Example:
        >>> import torch
        >>> threshold_mask(torch.tensor([[0.2, 0.3, 0.4]]), 0.3)
        tensor([[False, False,  True]])
    """
    return scores > threshold


def random_patch_mask(
    batch_size: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Mask each patch independently with probability ``ratio``.

    This is the random mask of the reference's pixel-space variants
    (``RandMask{Single,Multi}Fill(p)``): ``uniform < p`` per patch, so the number
    of masked patches varies from image to image.

    Args:
        batch_size: ``B``.
        num_patches: ``N``.
        ratio: Probability in ``[0, 1]`` that a patch is masked.
        generator: Optional random generator; its device is used when ``device``
            is not given.
        device: Device of the mask.

    Returns:
        ``(B, N)`` bool mask, ``True`` = replace.

    Raises:
        ValueError: If ``ratio`` is outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> mask = random_patch_mask(2, 49, 0.5, generator=g)
        >>> mask.shape, mask.dtype
        (torch.Size([2, 49]), torch.bool)
        >>> bool(random_patch_mask(2, 49, 1.0, generator=g).all())
        True
    """
    _check_ratio(ratio)
    target = _target_device(generator, device)
    noise = torch.rand((batch_size, num_patches), generator=generator, device=target)
    return noise < ratio


def random_keep_count_mask(
    batch_size: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Keep exactly ``int(N * (1 - ratio))`` random patches per image, mask the rest.

    This is the random mask of the reference's token-dropping variant
    (``RandMaskNoFill(r)``), where every image must keep the same number of
    tokens so that the kept tokens form a rectangular ``(B, K)`` batch. The kept
    patches of each row are a uniformly random subset.

    Args:
        batch_size: ``B``.
        num_patches: ``N``.
        ratio: Fraction in ``[0, 1]`` of patches to mask; the kept count is
            ``int(N * (1 - ratio))`` (rounded down, as in the reference).
        generator: Optional random generator; its device is used when ``device``
            is not given.
        device: Device of the mask.

    Returns:
        ``(B, N)`` bool mask with exactly ``int(N * (1 - ratio))`` ``False``
        entries per row.

    Raises:
        ValueError: If ``ratio`` is outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> mask = random_keep_count_mask(3, 49, 0.75, generator=g)
        >>> (~mask).sum(dim=1).tolist()  # int(49 * 0.25) = 12 kept per image
        [12, 12, 12]
    """
    _check_ratio(ratio)
    target = _target_device(generator, device)
    num_keep = int(num_patches * (1.0 - ratio))
    noise = torch.rand((batch_size, num_patches), generator=generator, device=target)
    keep = noise.argsort(dim=1)[:, :num_keep]
    mask = torch.ones((batch_size, num_patches), dtype=torch.bool, device=target)
    return mask.scatter_(1, keep, False)


def single_image_donors(
    batch_size: int,
    allow_self: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Pick one donor image per image, each image donating exactly once.

    With ``allow_self=True`` this is the reference single-fill pairing,
    ``torch.randperm(B)``: a uniform random permutation, which leaves about one
    image per batch paired with itself (its counterfactual then equals the
    original). With ``allow_self=False`` the permutation is a random single
    cycle through the whole batch (Sattolo-style: shuffle the batch, then let
    each image take from the next one in the shuffled order), so every image
    still donates exactly once and never to itself.

    Args:
        batch_size: ``B``.
        allow_self: Whether an image may be its own donor.
        generator: Optional random generator; its device is used when ``device``
            is not given.
        device: Device of the result.

    Returns:
        ``(B,)`` long tensor; image ``i`` takes its patches from image ``donors[i]``.

    Raises:
        ValueError: If ``batch_size < 1``, or ``batch_size < 2`` with
            ``allow_self=False``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> donors = single_image_donors(5, allow_self=False, generator=g)
        >>> sorted(donors.tolist()), bool((donors == torch.arange(5)).any())
        ([0, 1, 2, 3, 4], False)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not allow_self and batch_size < 2:
        raise ValueError(
            f"a donor other than the image itself needs a batch of at least 2 images, "
            f"got {batch_size}; use a larger batch (or drop_last=True in the DataLoader)."
        )
    target = _target_device(generator, device)
    order = torch.randperm(batch_size, generator=generator, device=target)
    if allow_self:
        return order
    donors = torch.empty_like(order)
    donors[order] = order.roll(-1)
    return donors


def multi_image_donors(
    batch_size: int,
    num_patches: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Pick an independent donor image for every patch of every image, never itself.

    The reference multi-fill rule: the donor of patch ``n`` of image ``i`` is
    ``(i + s) mod B`` with ``s`` uniform on ``{1, ..., B-1}``, drawn per patch.

    Args:
        batch_size: ``B``, at least 2.
        num_patches: ``N``.
        generator: Optional random generator; its device is used when ``device``
            is not given.
        device: Device of the result.

    Returns:
        ``(B, N)`` long tensor of donor indices in ``[0, B)``, never equal to the
        row index.

    Raises:
        ValueError: If ``batch_size < 2``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> donors = multi_image_donors(4, 16, generator=g)
        >>> donors.shape, bool((donors == torch.arange(4)[:, None]).any())
        (torch.Size([4, 16]), False)
    """
    if batch_size < 2:
        raise ValueError(
            f"multi-image donors need a batch of at least 2 images, got {batch_size}; "
            f"use a larger batch (or drop_last=True in the DataLoader)."
        )
    target = _target_device(generator, device)
    shift = torch.randint(
        1, batch_size, (batch_size, num_patches), generator=generator, device=target
    )
    rows = torch.arange(batch_size, device=target)[:, None]
    return (rows + shift) % batch_size


def refill_from_donors(
    images: Tensor, mask: Tensor, donors_per_patch: Tensor, patch_size: int
) -> Tensor:
    """Replace masked patches by the same patches of donor images.

    For every image ``i`` and masked patch ``n``, the pixels of patch ``n`` are
    copied from the **same spatial position** of image ``donors_per_patch[i, n]``
    (reference: ``x_cf = x * (1 - m) + x[idx] * m``). Unmasked patches are
    untouched. The function is differentiable; refillers detach its result.

    Args:
        images: ``(B, C, H, W)`` pixels.
        mask: ``(B, N)`` bool patch mask, ``True`` = replace.
        donors_per_patch: ``(B, N)`` long donor indices in ``[0, B)``. For a
            single donor per image, expand a ``(B,)`` tensor with
            ``donors[:, None].expand(-1, N)``.
        patch_size: Side of one square patch, in pixels.

    Returns:
        ``(B, C, H, W)`` counterfactual images.

    Raises:
        ValueError: If the images do not fit the patch size, or the mask or the
            donors do not have shape ``(B, N)``.

    Example:
        >>> import torch
        >>> images = torch.stack([torch.zeros(1, 2, 4), torch.ones(1, 2, 4)])
        >>> mask = torch.tensor([[True, False], [False, False]])
        >>> donors = torch.tensor([[1, 1], [0, 0]])
        >>> refill_from_donors(images, mask, donors, patch_size=2)[0, 0]
        tensor([[1., 1., 0., 0.],
                [1., 1., 0., 0.]])
    """
    h, w = check_patch_mask(images, mask, patch_size)
    if tuple(donors_per_patch.shape) != tuple(mask.shape):
        raise ValueError(
            f"donors_per_patch must have the mask's shape (B, N) = {tuple(mask.shape)}, "
            f"got {tuple(donors_per_patch.shape)}."
        )
    batch, channels = images.shape[:2]
    p = patch_size
    num_patches = h * w
    patches = images.reshape(batch, channels, h, p, w, p).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(batch, num_patches, channels, p, p)
    positions = torch.arange(num_patches, device=images.device)[None, :]
    donated = patches[donors_per_patch.to(images.device), positions]
    mixed = torch.where(mask[:, :, None, None, None], donated, patches)
    mixed = mixed.reshape(batch, h, w, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return mixed.reshape(batch, channels, h * p, w * p)


def keep_index_from_mask(mask: Tensor) -> Tensor:
    """Return the indices of the kept (``False``) patches of each row.

    Used for token dropping (the reference's ``RandMaskNoFill``): the backbone
    gathers the kept patch tokens after the positional embedding, which only
    works when every image keeps the same number of patches.

    Args:
        mask: ``(B, N)`` bool patch mask, ``True`` = drop.

    Returns:
        ``(B, K)`` long indices in increasing order, ``K`` = kept patches per row.

    Raises:
        ValueError: If ``mask`` is not a 2-D bool tensor, or the rows keep
            different numbers of patches.

    Example:
        >>> import torch
        >>> keep_index_from_mask(torch.tensor([[True, False, False], [False, True, False]]))
        tensor([[1, 2],
                [0, 2]])
    """
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(
            f"expected a (B, N) torch.bool mask, got shape {tuple(mask.shape)} "
            f"and dtype {mask.dtype}."
        )
    kept = ~mask
    counts = kept.sum(dim=1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise ValueError(
            f"token dropping needs the same number of kept patches in every image, but "
            f"the kept counts per image are {counts.tolist()}; use a masker with a fixed "
            f"keep count, e.g. RandomMasker(exact_count=True), or hide patches with "
            f"AttentionMaskRefiller instead."
        )
    num_keep = int(counts[0]) if counts.numel() else 0
    return kept.nonzero()[:, 1].reshape(mask.shape[0], num_keep)

"""Built-in maskers: choose which patches to replace.

References:
    [0] Xiao et al., *Masked Images Are Counterfactual Samples for Robust
    Fine-tuning*, CVPR 2023, arXiv:2303.03052, Sec. 3.2: object-centric and
    context masks from a class activation map, and random masks.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
from torch import Tensor

from cfmask.core.validation import check_number
from cfmask.functional.masking import (
    normalize_by_max,
    random_keep_count_mask,
    random_patch_mask,
    threshold_mask,
)
from cfmask.masking.base import Masker

__all__ = ("ContextMasker", "ObjectMasker", "RandomMasker", "SegmentationMasker")


def _check_unit_interval(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (inclusive), got {value}")


def _check_scores(
    owner: str, scores: Tensor | None, batch_size: int, grid: tuple[int, int]
) -> Tensor:
    if scores is None:
        raise ValueError(
            f"{owner} needs relevance scores but got scores=None; give the fine-tuner a "
            f"relevance map (e.g. cfmask.relevance.AttentionGradRelevance()), or use "
            f"RandomMasker, which needs none."
        )
    expected = (batch_size, grid[0] * grid[1])
    if tuple(scores.shape) != expected:
        raise ValueError(
            f"{owner} expected relevance scores of shape (batch_size, h*w) = {expected} "
            f"for a {grid[0]}x{grid[1]} patch grid, got {tuple(scores.shape)}."
        )
    if not scores.is_floating_point():
        raise ValueError(f"{owner} expected float relevance scores, got {scores.dtype}")
    return scores


class _RelevanceThresholdMasker(Masker):
    """Threshold the max-normalised relevance of each image (object or context side).

    The relevance scores of each image are divided by their maximum (no min
    subtraction) and compared with ``threshold`` ([0], Sec. 3.2). Subclasses pick
    the side: :attr:`masks_object` ``True`` masks the patches strictly above the
    threshold, ``False`` the complement (at or below it).

    Args:
        threshold: Normalised-relevance threshold in ``[0, 1]``.

    Raises:
        ValueError: If ``threshold`` is outside ``[0, 1]``.
    """

    requires_relevance: ClassVar[bool] = True
    #: ``True``: mask ``scores / max > threshold``; ``False``: mask the complement.
    masks_object: ClassVar[bool]

    def __init__(self, threshold: float) -> None:
        super().__init__()
        _check_unit_interval("threshold", threshold)
        self.threshold = threshold

    def forward(
        self,
        scores: Tensor | None,
        batch_size: int,
        grid_size: tuple[int, int],
        device: torch.device,
    ) -> Tensor:
        """Return the object (or context) mask.

        Args:
            scores: ``(B, N)`` relevance scores (non-negative).
            batch_size: ``B``.
            grid_size: Patch grid ``(h, w)`` with ``N = h * w``.
            device: Device of the returned mask.

        Returns:
            ``(B, N)`` bool mask, ``True`` where ``scores / max > threshold`` (object)
            or where ``scores / max <= threshold`` (context).

        Raises:
            ValueError: If ``scores`` is ``None`` or not of shape ``(B, h * w)``.
        """
        checked = _check_scores(type(self).__name__, scores, batch_size, grid_size)
        above = threshold_mask(normalize_by_max(checked.detach()), self.threshold)
        return (above if self.masks_object else ~above).to(device)


class ObjectMasker(_RelevanceThresholdMasker):
    """Mask the patches that support the label most (the object).

    The relevance scores of each image are divided by their maximum (no min
    subtraction) and the patches with normalised relevance strictly above
    ``threshold`` are masked, as in the reference's ``ObjMask*`` variants
    ([0], Sec. 3.2). The arg-max patch is therefore always masked.

    Args:
        threshold: Normalised-relevance threshold in ``[0, 1]``; the reference's
            tuned values are 0.3 (single-fill and no-fill) and 0.6 (multi-fill).

    Raises:
        ValueError: If ``threshold`` is outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> masker = ObjectMasker(threshold=0.3)
        >>> scores = torch.tensor([[0.1, 0.3, 0.6, 1.0]])
        >>> masker(scores, 1, (2, 2), torch.device("cpu"))
        tensor([[False, False,  True,  True]])
    """

    masks_object: ClassVar[bool] = True

    def __init__(self, threshold: float = 0.3) -> None:
        super().__init__(threshold)


class ContextMasker(_RelevanceThresholdMasker):
    """Mask the patches that do not support the label (the context).

    The exact complement of :class:`ObjectMasker` at the same threshold: a patch
    is masked when its max-normalised relevance is ``<= threshold``, as in the
    reference's ``CtxMask*`` variants ([0], Sec. 3.2). The arg-max patch is
    therefore never masked.

    Args:
        threshold: Normalised-relevance threshold in ``[0, 1]``; the reference's
            tuned values are 0.5 (single-fill), 0.3 (multi-fill) and 0.6 (no-fill).

    Raises:
        ValueError: If ``threshold`` is outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> masker = ContextMasker(threshold=0.5)
        >>> scores = torch.tensor([[0.1, 0.5, 0.6, 1.0]])
        >>> masker(scores, 1, (2, 2), torch.device("cpu"))
        tensor([[ True,  True, False, False]])
    """

    masks_object: ClassVar[bool] = False

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__(threshold)


class RandomMasker(Masker):
    """Mask random patches, independently of the image content.

    Needs no relevance scores, so no relevance pass runs. Two rules from the
    reference ([0], Sec. 3.2; reference-behaviour §2.2):

    * ``exact_count=False`` (``RandMask{Single,Multi}Fill(p)``): each patch is
      masked independently with probability ``ratio``; the count varies.
    * ``exact_count=True`` (``RandMaskNoFill(r)``): exactly
      ``int(N * (1 - ratio))`` random patches are kept per image, which token
      dropping (:class:`~cfmask.masking.TokenDropRefiller`) requires.

    Draws come from torch's global generator on the target device, so seed with
    :func:`torch.manual_seed` (or Lightning's ``seed_everything``).

    Args:
        ratio: Masking probability (or masked fraction with ``exact_count``) in
            ``[0, 1]``; the reference's tuned values are 0.5 for the fill
            variants and 0.75 for token dropping.
        exact_count: Keep exactly ``int(N * (1 - ratio))`` patches per image.

    Raises:
        ValueError: If ``ratio`` is outside ``[0, 1]``.

    Warns:
        UserWarning: If ``ratio`` is 0 or 1, where no counterfactual is made.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> mask = RandomMasker(ratio=0.75, exact_count=True)(None, 2, (7, 7), torch.device("cpu"))
        >>> (~mask).sum(dim=1).tolist()
        [12, 12]
    """

    requires_relevance: ClassVar[bool] = False

    def __init__(self, ratio: float = 0.5, exact_count: bool = False) -> None:
        super().__init__()
        _check_unit_interval("ratio", ratio)
        if ratio in (0, 1):
            warnings.warn(
                f"RandomMasker(ratio={ratio}) "
                + (
                    "masks no patch, so x_cf = x"
                    if ratio == 0
                    else "masks every patch, so x_cf is entirely the refill"
                )
                + ": there is no counterfactual to distil on. Use a ratio strictly between 0 "
                "and 1 (the reference tunes 0.5 for the fill variants).",
                UserWarning,
                stacklevel=2,
            )
        if not isinstance(exact_count, bool):
            raise TypeError(f"exact_count must be True or False, got {exact_count!r}")
        self.ratio = ratio
        self.exact_count = exact_count

    def forward(
        self,
        scores: Tensor | None,
        batch_size: int,
        grid_size: tuple[int, int],
        device: torch.device,
    ) -> Tensor:
        """Return a random mask.

        Args:
            scores: Ignored (may be ``None``).
            batch_size: ``B``.
            grid_size: Patch grid ``(h, w)`` with ``N = h * w``.
            device: Device of the returned mask (and of the random draws).

        Returns:
            ``(B, N)`` bool mask, ``True`` = replace.
        """
        num_patches = grid_size[0] * grid_size[1]
        if self.exact_count:
            return random_keep_count_mask(batch_size, num_patches, self.ratio, device=device)
        return random_patch_mask(batch_size, num_patches, self.ratio, device=device)


class SegmentationMasker(Masker):
    """Mask the patches that a ground-truth object mask covers (exact object mask).

    The exact-mask counterpart of :class:`ObjectMasker`: instead of thresholding a
    class activation map ([0], Sec. 3.2), it reads the object from segmentation
    masks that come with the data. The objective turns the batch's ``(B, H, W)``
    object masks into per-patch coverage with
    :func:`~cfmask.functional.patches.patch_coverage` and passes it as ``scores``;
    a patch is masked when at least ``min_coverage`` of its pixels belong to the
    object. Training with it needs batches of ``(images, targets, masks)``.

    Args:
        min_coverage: Smallest covered fraction of a patch, in ``(0, 1]``, for the
            patch to count as object (``0.5``: the majority of its pixels).

    Raises:
        TypeError: If ``min_coverage`` is not a number.
        ValueError: If ``min_coverage`` is outside ``(0, 1]``.

    Example:
        >>> import torch
        >>> masker = SegmentationMasker(min_coverage=0.5)
        >>> coverage = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
        >>> masker(coverage, 1, (2, 2), torch.device("cpu"))
        tensor([[False, False,  True,  True]])
    """

    requires_relevance: ClassVar[bool] = False
    requires_object_masks: ClassVar[bool] = True

    def __init__(self, min_coverage: float = 0.5) -> None:
        super().__init__()
        self.min_coverage = check_number(
            "min_coverage", min_coverage, low=0.0, high=1.0, low_open=True
        )

    def forward(
        self,
        scores: Tensor | None,
        batch_size: int,
        grid_size: tuple[int, int],
        device: torch.device,
    ) -> Tensor:
        """Return the exact object mask.

        Args:
            scores: ``(B, N)`` object coverage of each patch in ``[0, 1]``.
            batch_size: ``B``.
            grid_size: Patch grid ``(h, w)`` with ``N = h * w``.
            device: Device of the returned mask.

        Returns:
            ``(B, N)`` bool mask, ``True`` where ``scores >= min_coverage``.

        Raises:
            ValueError: If ``scores`` is ``None``, not float, or not of shape
                ``(B, h * w)``.
        """
        owner = type(self).__name__
        if scores is None:
            raise ValueError(
                f"{owner} needs the per-patch object coverage but got scores=None; train "
                f"with a datamodule whose batches carry (images, targets, masks) so the "
                f"objective can compute it with cfmask.functional.patches.patch_coverage."
            )
        checked = _check_scores(owner, scores, batch_size, grid_size)
        return (checked.detach() >= self.min_coverage).to(device)

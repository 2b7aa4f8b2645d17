"""Built-in refillers: build the counterfactual view of a batch from a patch mask.

Pixel refillers (:class:`SingleImageRefiller`, :class:`MultiImageRefiller`,
:class:`ConstantRefiller`) return new images in ``[0, 1]``. The "no-fill"
refillers (:class:`TokenDropRefiller`, :class:`AttentionMaskRefiller`) keep the
pixels and tell the backbone which patch tokens to hide. Every refiller returns
detached images: the counterfactual is a constant input, no gradient flows
back through it.

References:
    [0] Xiao et al., *Masked Images Are Counterfactual Samples for Robust
    Fine-tuning*, CVPR 2023, arXiv:2303.03052, Sec. 3.2 (single-image and
    multi-image refilling; dropping masked patches as in MAE) and Sec. 4.2
    (the "no-fill" baseline).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from cfmask.functional.masking import (
    keep_index_from_mask,
    multi_image_donors,
    refill_from_donors,
    single_image_donors,
)
from cfmask.functional.patches import check_patch_mask, patch_mask_to_pixels
from cfmask.masking.base import Counterfactual, Refiller

__all__ = (
    "AttentionMaskRefiller",
    "ConstantRefiller",
    "MultiImageRefiller",
    "SingleImageRefiller",
    "TokenDropRefiller",
)


def _check_donor_batch(refiller: Refiller, images: Tensor) -> None:
    batch = images.shape[0]
    if batch < refiller.min_batch_size:
        raise ValueError(
            f"{type(refiller).__name__} refills masked patches with patches of other "
            f"images in the batch, so it needs at least {refiller.min_batch_size} images, "
            f"got a batch of {batch}. Use a larger batch size, or drop_last=True in the "
            f"training DataLoader so that a final batch of one image is skipped."
        )


class _DonorRefiller(Refiller):
    """Fill each masked patch with the patch at the same position of a donor image.

    Subclasses choose the donors (:meth:`_draw_donors`); the refill itself
    ([0], Sec. 3.2) is shared.
    """

    min_batch_size: ClassVar[int] = 2

    @abstractmethod
    def _draw_donors(self, batch: int, num_patches: int, device: torch.device) -> Tensor:
        """Return the ``(B, N)`` long index of the image that donates each patch."""

    def forward(self, images: Tensor, mask: Tensor, patch_size: int) -> Counterfactual:
        """Return the refilled batch.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``, ``B >= 2``.
            mask: ``(B, N)`` bool patch mask, ``True`` = replace.
            patch_size: Side of one square patch, in pixels.

        Returns:
            A :class:`Counterfactual` with detached ``(B, C, H, W)`` images.

        Raises:
            ValueError: If the batch holds a single image, or the mask does not
                fit the images.
        """
        check_patch_mask(images, mask, patch_size)
        _check_donor_batch(self, images)
        batch, num_patches = mask.shape
        donors = self._draw_donors(batch, num_patches, images.device)
        with torch.no_grad():
            refilled = refill_from_donors(images.detach(), mask, donors, patch_size)
        return Counterfactual(refilled)


class SingleImageRefiller(_DonorRefiller):
    """Fill the masked patches of each image from one other image of the batch.

    The batch is shuffled by a random permutation and every image takes its
    masked patches from its partner, at the same spatial positions (reference
    ``*SingleFill``; [0], Sec. 3.2). Each image donates exactly once. Draws come
    from torch's global generator on the images' device.

    Args:
        allow_self: ``True`` reproduces the reference, a plain ``randperm`` that
            may pair an image with itself (about one image per batch, whose
            counterfactual then equals the original). ``False`` draws a random
            single cycle instead, so no image is its own donor.

    Example:
        >>> import torch
        >>> images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
        >>> mask = torch.tensor([[True, False, False, False], [False] * 4])
        >>> cf = SingleImageRefiller(allow_self=False)(images, mask, patch_size=2)
        >>> cf.images[0, 0]
        tensor([[1., 1., 0., 0.],
                [1., 1., 0., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.]])
    """

    def __init__(self, allow_self: bool = True) -> None:
        super().__init__()
        if not isinstance(allow_self, bool):
            raise TypeError(f"allow_self must be True or False, got {allow_self!r}")
        self.allow_self = allow_self

    def _draw_donors(self, batch: int, num_patches: int, device: torch.device) -> Tensor:
        donors = single_image_donors(batch, self.allow_self, device=device)
        return donors[:, None].expand(batch, num_patches)


class MultiImageRefiller(_DonorRefiller):
    """Fill every masked patch from its own randomly chosen other image.

    Patch ``n`` of image ``i`` comes from image ``(i + s) mod B`` with ``s``
    uniform on ``{1, ..., B-1}``, drawn per patch, at the same spatial position
    (reference ``*MultiFill``; [0], Sec. 3.2). An image never donates to itself.
    Draws come from torch's global generator on the images' device.

    Example:
        >>> import torch
        >>> images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
        >>> mask = torch.ones(2, 4, dtype=torch.bool)
        >>> cf = MultiImageRefiller()(images, mask, patch_size=2)
        >>> torch.equal(cf.images, images.flip(0))  # with two images, the donor is the other one
        True
    """

    def __init__(self) -> None:
        super().__init__()

    def _draw_donors(self, batch: int, num_patches: int, device: torch.device) -> Tensor:
        return multi_image_donors(batch, num_patches, device=device)


class ConstantRefiller(Refiller):
    """Fill the masked patches with one constant pixel value.

    Not a variant of the reference; a simple baseline (``value=0.0`` paints the
    masked patches black in ``[0, 1]`` pixel space, before the backbone's own
    normalisation).

    Args:
        value: Fill value in ``[0, 1]``, applied to every channel.

    Raises:
        ValueError: If ``value`` is outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> cf = ConstantRefiller(0.5)(torch.ones(1, 1, 2, 4), torch.tensor([[False, True]]), 2)
        >>> cf.images[0, 0]
        tensor([[1.0000, 1.0000, 0.5000, 0.5000],
                [1.0000, 1.0000, 0.5000, 0.5000]])
    """

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"value must be a number in [0, 1], got {value!r}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"value must be in [0, 1] (pixels are in [0, 1] before the backbone "
                f"normalises them), got {value}"
            )
        self.value = value

    def forward(self, images: Tensor, mask: Tensor, patch_size: int) -> Counterfactual:
        """Return the constant-filled batch.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            mask: ``(B, N)`` bool patch mask, ``True`` = replace.
            patch_size: Side of one square patch, in pixels.

        Returns:
            A :class:`Counterfactual` with detached ``(B, C, H, W)`` images.

        Raises:
            ValueError: If the mask does not fit the images.
        """
        grid = check_patch_mask(images, mask, patch_size)
        pixels = patch_mask_to_pixels(mask, grid, patch_size)
        return Counterfactual(images.detach().masked_fill(pixels, self.value))


class TokenDropRefiller(Refiller):
    """Drop the masked patch tokens inside the backbone instead of refilling.

    The reference's ``RandMaskNoFill`` ([0], Secs. 3.2 and 4.2;
    reference-behaviour §2.2): the pixels are left as they are and the backbone
    keeps only the unmasked patch tokens after the positional embedding
    (MAE-style), which also saves compute. Every image must keep the same
    number of patches, so pair it with ``RandomMasker(exact_count=True)``.

    Example:
        >>> import torch
        >>> mask = torch.tensor([[True, False, True, False]])
        >>> TokenDropRefiller()(torch.zeros(1, 3, 4, 4), mask, patch_size=2).keep_index
        tensor([[1, 3]])
    """

    hides_tokens: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()

    def forward(self, images: Tensor, mask: Tensor, patch_size: int) -> Counterfactual:
        """Return the images with the indices of the patch tokens to keep.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            mask: ``(B, N)`` bool patch mask, ``True`` = drop, with the same
                number of ``False`` entries in every row.
            patch_size: Side of one square patch, in pixels.

        Returns:
            A :class:`Counterfactual` with the detached images and ``(B, K)``
            ``keep_index``.

        Raises:
            ValueError: If the mask does not fit the images, or the rows keep
                different numbers of patches.
        """
        check_patch_mask(images, mask, patch_size)
        return Counterfactual(images.detach(), keep_index=keep_index_from_mask(mask))


class AttentionMaskRefiller(Refiller):
    """Hide the masked patch tokens as attention keys instead of refilling.

    The reference's ``ObjMaskNoFill`` / ``CtxMaskNoFill`` ([0], Secs. 3.2 and 4.2;
    reference-behaviour §2.2): the pixels are left as they are and, in every
    block, no query may attend to a masked patch token. The masked tokens are
    still computed (no compute saving) but never influence the class token, so
    the mask may hide a different number of patches in each image.

    Example:
        >>> import torch
        >>> mask = torch.tensor([[True, False, False, False]])
        >>> AttentionMaskRefiller()(torch.zeros(1, 3, 4, 4), mask, patch_size=2).key_mask
        tensor([[ True, False, False, False]])
    """

    hides_tokens: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()

    def forward(self, images: Tensor, mask: Tensor, patch_size: int) -> Counterfactual:
        """Return the images with the key mask for the backbone.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            mask: ``(B, N)`` bool patch mask, ``True`` = hide.
            patch_size: Side of one square patch, in pixels.

        Returns:
            A :class:`Counterfactual` with the detached images and ``(B, N)``
            ``key_mask`` (a copy of ``mask``).

        Raises:
            ValueError: If the mask does not fit the images.
        """
        check_patch_mask(images, mask, patch_size)
        return Counterfactual(images.detach(), key_mask=mask.clone())

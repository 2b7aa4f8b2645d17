"""Abstract interfaces for maskers and refillers.

Conventions (used everywhere in cfmask):

* A patch mask is a ``torch.bool`` tensor of shape ``(B, N)`` over the patch
  tokens in row-major grid order (prefix tokens excluded); ``True`` means
  "replace (or hide) this patch".
* Relevance scores are ``float`` tensors of shape ``(B, N)`` in ``[0, 1]``.
* Pixel-space masks exist only inside refillers.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from cfmask.core.components import Component

__all__ = ("Counterfactual", "Masker", "Refiller")


@dataclass(frozen=True)
class Counterfactual:
    """A counterfactual view of a batch, as produced by a :class:`Refiller`.

    Pixel-space refillers return new ``images``; the "no-fill" variants of the
    reference keep the images and hide patches inside the backbone instead.

    Attributes:
        images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
        keep_index: Optional ``(B, K)`` long indices of patch tokens to keep
            (token dropping); passed to ``VisionBackbone.forward_features``.
        key_mask: Optional ``(B, N)`` bool, ``True`` = patch hidden as an attention key.
    """

    images: Tensor
    keep_index: Tensor | None = None
    key_mask: Tensor | None = None


class Masker(Component):
    """Choose which patches of each image to replace.

    Subclasses set :attr:`requires_relevance` to ``True`` when they need
    relevance scores; the fine-tuner then runs its :class:`~cfmask.relevance.RelevanceMap`
    first and passes the ``(B, N)`` scores, otherwise ``scores`` is ``None``.
    Subclasses that read ground-truth object masks instead set
    :attr:`requires_object_masks` to ``True``; the objective then passes the
    per-patch object coverage of the batch's ``(B, H, W)`` masks as ``scores``
    (see :func:`~cfmask.functional.patches.patch_coverage`).
    """

    requires_relevance: ClassVar[bool] = False
    requires_object_masks: ClassVar[bool] = False

    @abstractmethod
    def forward(
        self,
        scores: Tensor | None,
        batch_size: int,
        grid_size: tuple[int, int],
        device: torch.device,
    ) -> Tensor:
        """Return the patch mask.

        Args:
            scores: ``(B, N)`` relevance in ``[0, 1]`` (or object coverage when
                :attr:`requires_object_masks` is ``True``), or ``None`` when the
                masker needs neither.
            batch_size: ``B``.
            grid_size: Patch grid ``(h, w)`` with ``N = h * w``.
            device: Device of the returned mask.

        Returns:
            ``(B, N)`` bool mask, ``True`` = replace.
        """


class Refiller(Component):
    """Build counterfactual images from a batch and a patch mask.

    :attr:`min_batch_size` is the smallest batch the refiller can work with
    (2 for refillers that take patches from other images). :attr:`hides_tokens` is
    ``True`` for refillers whose counterfactual hides patch tokens from the backbone
    (``keep_index`` or ``key_mask``) instead of changing pixels; they need a backbone
    whose :attr:`~cfmask.backbones.VisionBackbone.supports_token_hiding` is ``True``.
    """

    min_batch_size: ClassVar[int] = 1
    hides_tokens: ClassVar[bool] = False

    @abstractmethod
    def forward(self, images: Tensor, mask: Tensor, patch_size: int) -> Counterfactual:
        """Return the counterfactual view of ``images``.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            mask: ``(B, N)`` bool patch mask, ``True`` = replace.
            patch_size: Side of one square patch, in pixels.

        Returns:
            The :class:`Counterfactual` batch.
        """

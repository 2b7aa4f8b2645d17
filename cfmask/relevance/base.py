"""Abstract interface for relevance maps (class activation maps over patches)."""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor

from cfmask.backbones.base import VisionBackbone
from cfmask.components import Component

__all__ = ("RelevanceMap",)


class RelevanceMap(Component):
    """Score how much each patch of an image supports its label.

    A relevance map receives the model as an argument (it never holds it, so the
    model is not duplicated in ``state_dict``), must not call ``.backward()`` or
    touch parameter ``.grad``, must leave ``model.training`` as it found it, and
    returns detached scores.
    """

    @abstractmethod
    def forward(self, backbone: VisionBackbone, images: Tensor, targets: Tensor) -> Tensor:
        """Return per-patch relevance.

        Args:
            backbone: The model to explain (the current student by default).
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` long class indices (ground truth).

        Returns:
            ``(B, N)`` detached float scores in ``[0, 1]``.
        """

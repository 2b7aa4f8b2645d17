"""Abstract interface for relevance maps (class activation maps over patches)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from torch import Tensor

from cfmask.backbones.base import VisionBackbone
from cfmask.core.components import Component

__all__ = ("RelevanceMap", "RelevanceWithOutputs")


@dataclass(frozen=True)
class RelevanceWithOutputs:
    """Relevance scores together with the model's outputs on the same images.

    Attributes:
        scores: ``(B, N)`` detached relevance in ``[0, 1]``.
        features: ``(B, D)`` features, in the autograd graph of the parameters.
        logits: ``(B, K)`` logits, in the autograd graph of the parameters.
    """

    scores: Tensor
    features: Tensor
    logits: Tensor


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

    def forward_with_outputs(
        self, backbone: VisionBackbone, images: Tensor, targets: Tensor
    ) -> RelevanceWithOutputs:
        """Return relevance and the backbone's features and logits on ``images``.

        The fine-tuner needs the student's logits on the clean batch for the
        cross-entropy anyway; a relevance map whose own pass produces them can
        override this to share that forward pass (saving one forward per step).
        The default runs the relevance map, then a separate forward pass.

        Overrides run in the backbone's *current* mode; callers only use this
        when train and eval mode compute the same function (no active dropout,
        drop-path or batch norm), so the shared pass equals the separate ones.

        Args:
            backbone: The model (the current student).
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` ground-truth class indices.

        Returns:
            Scores (detached) plus features and logits (with autograd graph).
        """
        scores = self(backbone, images, targets)
        features = backbone.forward_features(images)
        return RelevanceWithOutputs(scores, features, backbone.forward_head(features))

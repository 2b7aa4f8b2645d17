"""The interface every vision backbone adapter implements.

A :class:`VisionBackbone` is a complete image classifier in the sense of
Xiao et al. (CVPR 2023, arXiv:2303.03052, Eq. 2): an encoder ``f`` (from
``[0, 1]`` pixels to a feature vector) and a head ``g`` (feature to logits).
Adapters also own the fiddly plumbing that the rest of the library must not
know about: pixel normalisation, the patch grid, capture of per-head attention
probabilities, and the two "no-fill" ways of hiding patches (token dropping and
key masking).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Literal

import torch
from torch import Tensor, nn

from cfmask.core.components import Component
from cfmask.core.data_config import DataConfig

__all__ = ("AttentionCaptureError", "DataConfig", "TokenPooling", "VisionBackbone")

TokenPooling = Literal["cls", "mean", "attention"]
"""How a backbone's head reads the final token sequence (:attr:`VisionBackbone.token_pooling`)."""


class AttentionCaptureError(RuntimeError):
    """Raised when a backbone's attention probabilities cannot be captured."""


class VisionBackbone(Component):
    """A ViT classifier that takes ``[0, 1]`` pixels and exposes its patch tokens.

    Shapes: images ``(B, C, H, W)`` in ``[0, 1]``; features ``(B, D)``;
    logits ``(B, K)``; patch masks ``(B, N)`` with ``N = grid[0] * grid[1]``
    (prefix tokens such as CLS excluded); attention probabilities per block
    ``(B, heads, T, T)`` with ``T = N + num_prefix_tokens``.
    """

    @property
    @abstractmethod
    def patch_size(self) -> int:
        """Side of one square patch, in pixels."""

    @property
    @abstractmethod
    def grid_size(self) -> tuple[int, int]:
        """Number of patches along height and width."""

    @property
    def num_patches(self) -> int:
        """Number of patch tokens ``N``."""
        h, w = self.grid_size
        return h * w

    @property
    @abstractmethod
    def num_prefix_tokens(self) -> int:
        """Number of tokens before the patch tokens (1 for a CLS token)."""

    @property
    def token_pooling(self) -> TokenPooling:
        """Which representation of the token sequence the head uses.

        ``"cls"``: the class token (row 0); ``"mean"``: the mean of the patch tokens;
        ``"attention"``: a latent-query attention pool, whose ``(B, heads, L, T)``
        probabilities (``T`` may also be just the ``N`` patch tokens) come last in
        :meth:`attention_probes`, after the blocks'. Relevance maps read the rollout at
        this representation (:func:`cfmask.functional.relevance.attention_rollout`).
        Adapters for heads of another kind must raise at construction.
        """
        return "cls"

    @property
    def supports_token_hiding(self) -> bool:
        """Whether ``keep_index``/``key_mask`` work in :meth:`forward_features`."""
        return True

    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """Dimension ``D`` of :meth:`forward_features`."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of logits ``K``."""

    @property
    @abstractmethod
    def data_config(self) -> DataConfig:
        """Input size and interpolation the backbone expects."""

    @abstractmethod
    def forward_features(
        self,
        images: Tensor,
        *,
        keep_index: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """Encode images into the feature vector the distillation loss compares.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``; normalised inside.
            keep_index: Optional ``(B, K)`` long indices of the patch tokens to
                keep (the others are dropped from the sequence after the
                positional embedding, MAE-style). Prefix tokens are always kept.
            key_mask: Optional ``(B, N)`` bool; ``True`` hides a patch token as an
                attention key from every query in every block.

        Returns:
            ``(B, D)`` features (for CLIP: the un-normalised projected embedding).
        """

    @abstractmethod
    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classification head ``g`` (trained alone in linear probing)."""

    @abstractmethod
    def forward_head(self, features: Tensor) -> Tensor:
        """Map ``(B, D)`` features to ``(B, K)`` logits."""

    @property
    def needs_class_names(self) -> bool:
        """Whether the head waits for the datamodule's class names (built later).

        ``False`` unless an adapter supports a deferred head (``OpenCLIPViT`` with
        ``class_names="datamodule"``); the fine-tuner then builds it in ``setup``
        with :meth:`zero_shot_weight` and :meth:`set_class_names`.
        """
        return False

    def zero_shot_weight(
        self,
        class_names: Sequence[str],
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Compute the ``(K, D)`` head weight for ``class_names`` (deferred heads only).

        Raises:
            NotImplementedError: For adapters without a deferred head.
        """
        raise NotImplementedError(f"{type(self).__name__} has no head built from class names")

    def set_class_names(self, class_names: Sequence[str], weight: Tensor | None = None) -> None:
        """Build the deferred head for ``class_names`` (from ``weight`` when given).

        Raises:
            NotImplementedError: For adapters without a deferred head.
        """
        raise NotImplementedError(f"{type(self).__name__} has no head built from class names")

    def forward(self, images: Tensor) -> Tensor:
        """Classify ``(B, C, H, W)`` images in ``[0, 1]`` into ``(B, K)`` logits."""
        return self.forward_head(self.forward_features(images))

    @abstractmethod
    def attention_probes(self) -> AbstractContextManager[list[Tensor]]:
        """Capture post-softmax attention probabilities during forward passes.

        Inside the context the adapter computes attention explicitly (not fused)
        and appends, for each block in forward order, the ``(B, heads, T, T)``
        probabilities, kept in the autograd graph so that
        ``torch.autograd.grad(score, probes)`` works. On exit every flag, method
        and hook is restored, even when an exception is raised.

        Yields:
            The list that receives the probabilities; cleared on entry.

        Raises:
            AttentionCaptureError: If the wrapped model's attention can't be captured.
        """

    def check_image_size(self, images: Tensor) -> None:
        """Raise a clear error if ``images`` do not fit the patch grid.

        Args:
            images: ``(B, C, H, W)`` batch.

        Raises:
            ValueError: If ``H`` or ``W`` is not ``patch_size * grid``.
        """
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        gh, gw = self.grid_size
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the patch size {p}; resize or "
                f"crop to {gh * p}x{gw * p} (the backbone's data_config.image_size)."
            )
        if (h // p, w // p) != (gh, gw):
            raise ValueError(
                f"image size {h}x{w} gives a {h // p}x{w // p} patch grid but the "
                f"backbone was built for {gh}x{gw}; use {gh * p}x{gw * p} images."
            )

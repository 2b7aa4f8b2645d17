"""Attention-based relevance maps: the reference's gradient-weighted rollout, and plain rollout."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from cfmask.backbones.base import AttentionCaptureError, VisionBackbone
from cfmask.functional.relevance import attention_grad_rollout, attention_rollout
from cfmask.relevance.base import RelevanceMap, RelevanceWithOutputs

__all__ = ("AttentionGradRelevance", "AttentionRolloutRelevance")

_EPS = 1e-8


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode and restore every submodule's own flag afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _check_inputs(backbone: VisionBackbone, images: Tensor, targets: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if targets.ndim != 1 or targets.shape[0] != images.shape[0]:
        raise ValueError(
            f"targets must be (B,) = ({images.shape[0]},) class indices, got {tuple(targets.shape)}"
        )
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must hold integer class indices, got {targets.dtype}")


def _split_pool(
    backbone: VisionBackbone, probes: list[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """The blocks' probabilities, and the attention pool's (a list of 0 or 1 tensors).

    Raises:
        AttentionCaptureError: If an attention-pool backbone recorded no pool attention.
    """
    if backbone.token_pooling != "attention":
        return probes, []
    if len(probes) < 2 or probes[-1].shape[-2] == probes[-1].shape[-1]:
        raise AttentionCaptureError(
            f"{type(backbone).__name__} pools with attention but its probes hold no pool "
            "attention after the blocks' (the adapter must record it last)."
        )
    return probes[:-1], probes[-1:]


def _normalise(cam: Tensor) -> Tensor:
    """Divide each image's scores by its maximum (no min subtraction), as the reference."""
    return cam / (cam.amax(dim=1, keepdim=True) + _EPS)


class AttentionGradRelevance(RelevanceMap):
    """Gradient-weighted attention rollout seeded with the ground-truth logit ("MM-CAM").

    The class activation map used by Xiao et al. (CVPR 2023, arXiv:2303.03052) for object
    and context masks: Chefer et al.'s rule for self-attention (ICCV 2021) over *all*
    blocks, ``R <- R + mean_h[(dy/dA * A)^+] R`` from ``R = I``, where ``A`` are the
    per-head post-softmax probabilities and ``y = sum_i logit_i[target_i]`` is the sum of
    the ground-truth logits (the 100-times scaled cosine logits of a zero-shot CLIP head). The map
    is read at the representation the head uses (``backbone.token_pooling``): the CLS
    row, the mean of the patch rows, or the attention pool's row folded in as one more
    step (see :mod:`cfmask.functional.relevance`); over the patch tokens, divided by its
    per-image maximum (+1e-8), without min subtraction.

    The pass runs with gradients enabled (also inside ``torch.no_grad``), on detached
    inputs, with the backbone temporarily in eval mode (every submodule's mode is
    restored afterwards). Only ``torch.autograd.grad`` to the attention probabilities is
    taken: no ``.backward()``, no parameter ``.grad`` is touched. Because the rollout is
    not scale-invariant, the scale of the logits changes the map.

    Args:
        last_blocks: ``None`` (default) rolls out over every block, as the reference
            code does. A number ``k`` rolls out over the last ``k`` blocks only (the
            ``start_layer`` of Chefer et al.'s CLIP notebook): the gradient then only
            flows back through those blocks, which makes the relevance backward
            nearly free for small ``k``, at the price of a different map.

    Example:
        >>> import torch
        >>> from cfmask.backbones import TimmViT
        >>> vit = TimmViT("test_vit", num_classes=3, img_size=32, patch_size=8,
        ...               model_kwargs={"depth": 2})
        >>> scores = AttentionGradRelevance()(vit, torch.rand(2, 3, 32, 32), torch.tensor([0, 2]))
        >>> scores.shape, bool(scores.max() <= 1)
        (torch.Size([2, 16]), True)
    """

    def __init__(self, last_blocks: int | None = None) -> None:
        super().__init__()
        if last_blocks is not None and (not isinstance(last_blocks, int) or last_blocks < 1):
            raise ValueError(
                f"last_blocks must be a positive number of blocks or None (all blocks, the "
                f"reference's rule), got {last_blocks!r}"
            )
        self.last_blocks = last_blocks

    def _used(self, probes: list[Tensor]) -> list[Tensor]:
        """The probes the rollout runs over (all, or only the last ``last_blocks``)."""
        if self.last_blocks is None:
            return probes
        if self.last_blocks > len(probes):
            raise ValueError(
                f"last_blocks={self.last_blocks} but the backbone has only {len(probes)} "
                "blocks; use a smaller value or None for all blocks."
            )
        return probes[-self.last_blocks :]

    def _rollout(
        self,
        backbone: VisionBackbone,
        used: list[Tensor],
        pool: list[Tensor],
        grads: Sequence[Tensor],
    ) -> Tensor:
        attentions = [p.detach().float() for p in used]
        grads = [g.float() for g in grads]
        cam = attention_grad_rollout(
            attentions,
            grads[: len(used)],
            backbone.num_prefix_tokens,
            backbone.token_pooling,
            pool[0].detach().float() if pool else None,
            grads[len(used)] if pool else None,
        )
        return _normalise(cam).detach()

    def forward(self, backbone: VisionBackbone, images: Tensor, targets: Tensor) -> Tensor:
        """Return ``(B, N)`` detached relevance scores in ``[0, 1]``.

        Args:
            backbone: The model to explain.
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` ground-truth class indices (the seed logits).

        Returns:
            ``(B, N)`` scores, each row divided by its maximum.
        """
        _check_inputs(backbone, images, targets)
        inputs = images.detach().clone().requires_grad_(True)  # keeps a graph for frozen models
        with _eval_mode(backbone), torch.enable_grad(), backbone.attention_probes() as probes:
            logits = backbone(inputs)
            score = logits.gather(1, targets.long()[:, None]).sum()
            blocks, pool = _split_pool(backbone, probes)
            used = self._used(blocks)
            grads = torch.autograd.grad(score, used + pool)
        return self._rollout(backbone, used, pool, grads)

    def forward_with_outputs(
        self, backbone: VisionBackbone, images: Tensor, targets: Tensor
    ) -> RelevanceWithOutputs:
        """Relevance from the same forward pass that yields the features and logits.

        The seed's gradient to the attention probabilities is taken with
        ``retain_graph=True``, so the logits stay usable for the training loss: one
        forward pass with explicit attention replaces the relevance pass plus a
        separate forward on the clean batch (the reference's cost drops from 9 to 8
        forward-equivalents per step). Runs in the backbone's current mode; see
        :meth:`RelevanceMap.forward_with_outputs`.

        Args:
            backbone: The model to explain (the current student).
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` ground-truth class indices.

        Returns:
            Detached ``(B, N)`` scores, and ``(B, D)`` features and ``(B, K)`` logits
            that keep their autograd graph.
        """
        _check_inputs(backbone, images, targets)
        with torch.enable_grad(), backbone.attention_probes() as probes:
            features = backbone.forward_features(images.detach())
            logits = backbone.forward_head(features)
            score = logits.gather(1, targets.long()[:, None]).sum()
            if not score.requires_grad:
                raise ValueError(
                    "forward_with_outputs needs a backbone with trainable parameters; "
                    "use the relevance map's forward() for a frozen model."
                )
            blocks, pool = _split_pool(backbone, probes)
            used = self._used(blocks)
            grads = torch.autograd.grad(score, used + pool, retain_graph=True)
        scores = self._rollout(backbone, used, pool, grads)
        return RelevanceWithOutputs(scores, features, logits)


class AttentionRolloutRelevance(RelevanceMap):
    """Gradient-free attention rollout (Abnar & Zuidema, ACL 2020), class-agnostic.

    ``R = prod_l (0.5 I + 0.5 mean_h A_l)`` over all blocks, read at the representation
    the head uses (CLS row, mean of the patch rows, or the attention pool's row times
    ``R``; see :mod:`cfmask.functional.relevance`), over the patch tokens, divided by
    its per-image maximum. ``targets`` are ignored. A cheaper,
    label-free alternative to :class:`AttentionGradRelevance` (one forward pass under
    ``no_grad``, backbone temporarily in eval mode).

    Example:
        >>> import torch
        >>> from cfmask.backbones import TimmViT
        >>> vit = TimmViT("test_vit", num_classes=3, img_size=32, patch_size=8,
        ...               model_kwargs={"depth": 2})
        >>> AttentionRolloutRelevance()(vit, torch.rand(2, 3, 32, 32), torch.tensor([0, 2])).shape
        torch.Size([2, 16])
    """

    def forward(self, backbone: VisionBackbone, images: Tensor, targets: Tensor) -> Tensor:
        """Return ``(B, N)`` detached relevance scores in ``[0, 1]``.

        Args:
            backbone: The model to explain.
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` class indices (unused; kept for the common interface).

        Returns:
            ``(B, N)`` scores, each row divided by its maximum.
        """
        _check_inputs(backbone, images, targets)
        with _eval_mode(backbone), torch.no_grad(), backbone.attention_probes() as probes:
            backbone(images.detach())
            blocks, pool = _split_pool(backbone, probes)
            cam = attention_rollout(
                [p.float() for p in blocks],
                backbone.num_prefix_tokens,
                backbone.token_pooling,
                pool[0].float() if pool else None,
            )
        return _normalise(cam).detach()

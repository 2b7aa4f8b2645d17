"""Per-set top-1 (and top-5) accuracy with the reference's class-subset protocol.

Every evaluation set is scored with the same 1000-way ImageNet head (reference
notes §4.3). Sets that cover fewer classes (ImageNet-R, ImageNet-A, ObjectNet)
restrict the argmax to their ``class_subset`` (§5.4); ObjectNet's targets are
multi-hot, and a prediction is correct when the target is set at the predicted
class (§5.3). The headline "OOD average" is the mean over the non-ID sets.

Module interface: :class:`SubsetAccuracy` (a torchmetrics ``Metric``), one per set.
Functional interface: :func:`restrict_logits`, :func:`project_logits`,
:func:`top1_correct`, :func:`topk_correct`, :func:`ood_average`,
:func:`top_k_average`.

Top-5 accuracy counts a sample as correct when a target class is among the five
highest logits of the set's classes; it is reported only for sets with more than
five classes (with five or fewer it is 1 by construction).

This module knows nothing of the set descriptions
(:mod:`cfmask.evaluation.eval_sets`) and of the reports
(:mod:`cfmask.evaluation.reporting`), which both build on it;
:mod:`cfmask.evaluation.metrics` gathers the three.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = (
    "OOD_AVG",
    "SubsetAccuracy",
    "ood_average",
    "project_logits",
    "restrict_logits",
    "top1_correct",
    "top_k_average",
    "topk_correct",
)

#: Key of the OOD average in result dictionaries.
OOD_AVG = "ood_avg"


def restrict_logits(logits: Tensor, class_subset: Tensor | None) -> Tensor:
    """Set the logits of classes outside ``class_subset`` to ``-inf``.

    Args:
        logits: ``(B, C)`` logits.
        class_subset: ``(K,)`` allowed class indices, or ``None`` (no change).

    Returns:
        ``(B, C)`` logits whose argmax always lies in ``class_subset``.

    Example:
        >>> restrict_logits(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([1, 2]))
        tensor([[-inf, 1., 2.]])
    """
    if class_subset is None:
        return logits
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[class_subset.to(logits.device)] = True
    return logits.masked_fill(~keep, -math.inf)


def project_logits(logits: Tensor, class_subset: Tensor) -> Tensor:
    """Keep only the columns of ``class_subset`` (WiSE-FT's ``project_logits``).

    Args:
        logits: ``(B, C)`` logits.
        class_subset: ``(K,)`` class indices.

    Returns:
        ``(B, K)`` logits; column ``k`` is class ``class_subset[k]``.
    """
    return logits[:, class_subset.to(logits.device)]


def top1_correct(logits: Tensor, target: Tensor, class_subset: Tensor | None = None) -> Tensor:
    """Per-sample top-1 correctness, argmax taken over ``class_subset`` only.

    Args:
        logits: ``(B, C)`` logits.
        target: ``(B,)`` class indices, or ``(B, C)`` multi-hot (any non-zero
            entry marks a correct class).
        class_subset: ``(K,)`` allowed class indices, or ``None`` for all.

    Returns:
        ``(B,)`` bool.

    Example:
        >>> logits = torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
        >>> top1_correct(logits, torch.tensor([2, 1]), torch.tensor([1, 2]))
        tensor([True, True])
        >>> top1_correct(logits, torch.tensor([[0, 1, 1], [1, 0, 1]]), torch.tensor([1, 2]))
        tensor([ True, False])
    """
    pred = restrict_logits(logits, class_subset).argmax(dim=-1)
    if target.ndim == 2:
        return target.gather(1, pred[:, None]).squeeze(1) != 0
    return pred == target


def topk_correct(
    logits: Tensor, target: Tensor, k: int, class_subset: Tensor | None = None
) -> Tensor:
    """Per-sample top-``k`` correctness, ranking only the classes of ``class_subset``.

    Args:
        logits: ``(B, C)`` logits.
        target: ``(B,)`` class indices, or ``(B, C)`` multi-hot (correct when any
            marked class is among the ``k`` best).
        k: How many of the highest-scoring allowed classes count.
        class_subset: ``(K,)`` allowed class indices, or ``None`` for all; ``k`` must
            not exceed their number.

    Returns:
        ``(B,)`` bool.

    Example:
        >>> logits = torch.tensor([[5.0, 4.0, 1.0, 2.0], [0.0, 3.0, 1.0, 2.0]])
        >>> topk_correct(logits, torch.tensor([3, 2]), 2)
        tensor([False, False])
        >>> topk_correct(logits, torch.tensor([3, 2]), 2, torch.tensor([0, 2, 3]))
        tensor([True, True])
    """
    allowed = logits.shape[-1] if class_subset is None else int(class_subset.numel())
    if not 0 < k <= allowed:
        raise ValueError(f"k must be in [1, {allowed}] (the number of allowed classes), got {k}")
    pred = restrict_logits(logits, class_subset).topk(k, dim=-1).indices  # (B, k)
    if target.ndim == 2:
        return (target.gather(1, pred) != 0).any(dim=1)
    return (pred == target[:, None]).any(dim=1)


class SubsetAccuracy(Metric):
    """Top-1 accuracy over a class subset, with single- or multi-label targets.

    The reference implementation sets the logits outside the subset below the
    minimum and takes the argmax (Xiao et al., CVPR 2023, arXiv:2303.03052;
    reference notes §5.4); this is the same prediction.

    :meth:`compute` returns top-1 accuracy (what is logged and drives checkpoint
    selection); the same updates also count top-``top_k`` hits, read with
    :meth:`compute_top_k`.

    Args:
        num_classes: Width ``C`` of the logits.
        class_subset: Sorted ``(K,)`` allowed class indices, or ``None`` for all.
        multi_label: Targets are ``(B, C)`` multi-hot instead of ``(B,)`` indices.
        top_k: The ``k`` of :meth:`compute_top_k` (5); counted only when the set has
            more than ``k`` allowed classes.

    Example:
        >>> m = SubsetAccuracy(3, torch.tensor([1, 2]))
        >>> m.update(torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, 1.0]]), torch.tensor([2, 2]))
        >>> float(m.compute())
        0.5
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    correct_top_k: Tensor
    total: Tensor
    allowed: Tensor

    def __init__(
        self,
        num_classes: int = 1000,
        class_subset: Tensor | Sequence[int] | None = None,
        multi_label: bool = False,
        top_k: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.top_k = top_k
        allowed = torch.ones(num_classes, dtype=torch.bool)
        self.class_subset: Tensor | None = None
        if class_subset is not None:
            sub = torch.as_tensor(class_subset, dtype=torch.long)
            if sub.numel() == 0 or int(sub.min()) < 0 or int(sub.max()) >= num_classes:
                raise ValueError(f"class_subset must be non-empty indices in [0, {num_classes})")
            allowed = torch.zeros(num_classes, dtype=torch.bool)
            allowed[sub] = True
            self.class_subset = sub
        self.register_buffer("allowed", allowed, persistent=False)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("correct_top_k", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def has_top_k(self) -> bool:
        """Whether top-``k`` is meaningful: the set has more than ``top_k`` classes."""
        return int(self.allowed.sum()) > self.top_k

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Accumulate a batch.

        Args:
            logits: ``(B, C)`` logits.
            target: ``(B,)`` class indices, or ``(B, C)`` multi-hot if ``multi_label``.

        Raises:
            ValueError: On shape mismatch, or a target outside the class subset
                (which could never be scored correct).
        """
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (B, {self.num_classes}), got {tuple(logits.shape)}")
        b = logits.shape[0]
        if self.multi_label:
            if target.shape != (b, self.num_classes):
                raise ValueError(
                    f"multi-label target must be (B, {self.num_classes}) multi-hot, got "
                    f"{tuple(target.shape)}"
                )
            reachable = ((target != 0) & self.allowed).any(dim=1)
        else:
            if target.shape != (b,):
                raise ValueError(f"target must be (B,) class indices, got {tuple(target.shape)}")
            reachable = self.allowed[target]
        if not bool(reachable.all()):
            raise ValueError("a target class lies outside this set's class subset")
        restricted = logits.masked_fill(~self.allowed, -math.inf)
        ok = top1_correct(restricted, target)
        self.correct += ok.sum()
        if self.has_top_k:
            self.correct_top_k += topk_correct(restricted, target, self.top_k).sum()
        self.total += b

    def compute(self) -> Tensor:
        """Return top-1 accuracy in ``[0, 1]`` (``nan`` before any update)."""
        if int(self.total) == 0:
            return torch.tensor(float("nan"))
        return self.correct.float() / self.total

    def compute_top_k(self) -> Tensor:
        """Return top-``top_k`` accuracy in ``[0, 1]``, summed over processes under DDP.

        ``nan`` before any update or when the set has ``top_k`` classes or fewer.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn):
            if int(self.total) == 0 or not self.has_top_k:
                return torch.tensor(float("nan"))
            return self.correct_top_k.float() / self.total


def ood_average(results: Mapping[str, float], id_name: str = "imagenet") -> float:
    """Mean accuracy over every set except the ID set (and any existing average).

    Args:
        results: Set name → accuracy.
        id_name: Name of the in-distribution set.

    Returns:
        The mean, or ``nan`` if there is no OOD set.

    Example:
        >>> ood_average({"imagenet": 0.8, "imagenet_r": 0.6, "imagenet_a": 0.4})
        0.5
    """
    vals = [v for k, v in results.items() if k not in (id_name, OOD_AVG)]
    return sum(vals) / len(vals) if vals else float("nan")


def top_k_average(top_k: Mapping[str, float], names: Iterable[str], id_name: str) -> float:
    """OOD average of top-``k`` accuracy, when every OOD set has one.

    Args:
        top_k: Set name → top-``k`` accuracy (sets without one are absent).
        names: Every evaluated set name (a results mapping works too); all but
            ``id_name`` (and the OOD-average key) are OOD sets.
        id_name: Name of the in-distribution set.

    Returns:
        The mean over the OOD sets, or ``nan`` if one of them has no top-``k``
        value or there is no OOD set.
    """
    ood = [k for k in names if k not in (id_name, OOD_AVG)]
    if not ood or any(k not in top_k for k in ood):
        return float("nan")
    return sum(top_k[k] for k in ood) / len(ood)

"""Test-set accuracy with class-subset projection, and the OOD average.

Every evaluation set is scored with the model's full head (e.g. the 1000-way
ImageNet head). Sets that cover only some classes (ImageNet-R and -A: 200,
ObjectNet: 125 ImageNet classes) restrict the arg-max to those classes; ObjectNet
targets are multi-hot, because several ImageNet classes map to one ObjectNet
class and a prediction is right when it is any of them (reference behaviour §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ("EvalSet", "EvaluationResults", "SetAccuracy", "describe_test_sets", "subset_top1")


@dataclass(frozen=True)
class EvalSet:
    """How to score one test set.

    Attributes:
        name: Log name, e.g. ``"imagenet_r"`` (logged as ``test/<name>/acc1``).
        class_subset: Indices of the head's classes the set covers, or ``None`` for all.
        expected_size: Number of images the full set has, if known (for warnings).
    """

    name: str
    class_subset: tuple[int, ...] | None = None
    expected_size: int | None = None


def subset_top1(logits: Tensor, targets: Tensor, class_subset: Tensor | None) -> Tensor:
    """Per-sample top-1 correctness with an optional class-subset projection.

    Args:
        logits: ``(B, K)`` scores over all classes of the head.
        targets: ``(B,)`` class indices in ``[0, K)``, or ``(B, K)`` multi-hot
            (a prediction is correct if it hits any positive class).
        class_subset: ``(S,)`` long indices; the arg-max is taken over these only.

    Returns:
        ``(B,)`` bool.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[5.0, 1.0, 2.0]])
        >>> subset_top1(logits, torch.tensor([2]), torch.tensor([1, 2]))
        tensor([True])
    """
    if class_subset is not None:
        sub = logits.index_select(1, class_subset.to(logits.device))
        pred = class_subset.to(logits.device)[sub.argmax(dim=1)]
    else:
        pred = logits.argmax(dim=1)
    if targets.ndim == 2:
        return targets.gather(1, pred[:, None]).squeeze(1) > 0
    return pred == targets


class SetAccuracy(Metric):
    """Top-1 accuracy of one evaluation set, DDP-synchronised by torchmetrics.

    Args:
        class_subset: Class indices the set covers, or ``None`` for all.
    """

    full_state_update = False
    correct: Tensor
    total: Tensor

    def __init__(self, class_subset: Sequence[int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        subset = None if class_subset is None else torch.as_tensor(list(class_subset), dtype=torch.long)
        self.class_subset: Tensor | None = subset
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Accumulate a batch of ``(B, K)`` logits and ``(B,)`` or ``(B, K)`` targets."""
        hits = subset_top1(logits.detach(), targets, self.class_subset)
        self.correct += hits.sum()
        self.total += hits.numel()

    def compute(self) -> Tensor:
        """Accuracy in ``[0, 1]`` (0 when nothing was seen)."""
        return self.correct.float() / self.total.clamp(min=1).float()


def describe_test_sets(datamodule: Any) -> list[EvalSet]:
    """Read the test-set descriptions a datamodule offers.

    A datamodule may define ``eval_sets`` (a sequence of :class:`EvalSet`-like
    objects with ``name`` and ``class_subset``) or just ``test_set_names``; the
    first set is the in-distribution one.

    Args:
        datamodule: The trainer's datamodule, or ``None``.

    Returns:
        One :class:`EvalSet` per test loader (a single ``"test"`` set by default).
    """
    sets = getattr(datamodule, "eval_sets", None)
    if sets:
        return [
            EvalSet(
                name=str(s.name),
                class_subset=None if getattr(s, "class_subset", None) is None
                else tuple(int(i) for i in s.class_subset),
                expected_size=getattr(s, "expected_size", None),
            )
            for s in sets
        ]
    names = getattr(datamodule, "test_set_names", None)
    if names:
        return [EvalSet(name=str(n)) for n in names]
    return [EvalSet(name="test")]


@dataclass
class EvaluationResults:
    """Per-set top-1 accuracies and their OOD average.

    Attributes:
        accuracy: Mapping from set name to accuracy in ``[0, 1]``.
        id_set: Name of the in-distribution set (excluded from the OOD average).
    """

    accuracy: dict[str, float]
    id_set: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ood_average(self) -> float | None:
        """Mean accuracy over every set except :attr:`id_set` (``None`` if there are none)."""
        ood = [v for k, v in self.accuracy.items() if k != self.id_set]
        return sum(ood) / len(ood) if ood else None

    def as_log_dict(self) -> dict[str, float]:
        """``{"test/<set>/acc1": value, ..., "test/ood_avg/acc1": value}``."""
        out = {f"test/{k}/acc1": v for k, v in self.accuracy.items()}
        avg = self.ood_average
        if avg is not None and self.id_set is not None:
            out["test/ood_avg/acc1"] = avg
        return out

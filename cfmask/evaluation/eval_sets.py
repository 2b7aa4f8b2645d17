"""Descriptions of the evaluation sets: what each test loader's targets look like.

Every evaluation set is scored with the same classifier head (reference notes §4.3);
an :class:`EvalSet` says which of its classes a set covers (ImageNet-R and
ImageNet-A cover 200 of the 1000, §5.4), whether its targets are multi-hot
(ObjectNet, §5.3), how many images were found against how many were published, and
whether it is the in-distribution set. The metric that scores a set lives in
:mod:`cfmask.evaluation.accuracy`; the tables and files that report the scores in
:mod:`cfmask.evaluation.reporting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from cfmask.evaluation.accuracy import SubsetAccuracy

__all__ = ("EvalSet", "describe_test_sets")


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Describes one evaluation dataloader: how its targets look and what it covers.

    Attributes:
        name: Set key, e.g. ``"imagenet"``, ``"imagenet_r"``; log key
            ``test/<name>/acc1``.
        class_subset: Sorted ``(K,)`` long classifier indices the set is scored
            over, or ``None`` for all ``num_classes``.
        multi_label: ``True`` if targets are ``(B, num_classes)`` multi-hot
            (ObjectNet); otherwise ``(B,)`` class indices.
        num_classes: Width of the logits.
        num_samples: Images found on disk.
        expected_samples: Published image count, if known.
        is_id: Whether this is the in-distribution test set (excluded from the OOD average).
    """

    name: str
    class_subset: Tensor | None = None
    multi_label: bool = False
    num_classes: int = 1000
    num_samples: int | None = None
    expected_samples: int | None = None
    is_id: bool = False

    @property
    def truncated(self) -> bool:
        """Whether the image count differs from the published one."""
        return (
            self.expected_samples is not None
            and self.num_samples is not None
            and self.num_samples != self.expected_samples
        )

    @property
    def expected_size(self) -> int | None:
        """Alias of ``expected_samples``."""
        return self.expected_samples

    def metric(self) -> SubsetAccuracy:
        """Return a fresh :class:`~cfmask.evaluation.accuracy.SubsetAccuracy` for this set."""
        return SubsetAccuracy(self.num_classes, self.class_subset, self.multi_label)


def describe_test_sets(datamodule: Any, num_classes: int) -> list[EvalSet]:
    """Return one :class:`EvalSet` per test loader of ``datamodule``.

    A datamodule describes its sets with ``eval_sets`` (preferred) or just names
    them with ``test_set_names``; the first named set is then taken as the ID set.
    Without either, a single ID set called ``"test"`` is assumed.

    Args:
        datamodule: The trainer's datamodule, or ``None``.
        num_classes: Width of the model's logits.

    Returns:
        The set descriptions, in loader order.
    """
    sets = getattr(datamodule, "eval_sets", None)
    if sets:
        return list(sets)
    names = getattr(datamodule, "test_set_names", None) or ["test"]
    return [
        EvalSet(name=str(n), num_classes=num_classes, is_id=(i == 0)) for i, n in enumerate(names)
    ]

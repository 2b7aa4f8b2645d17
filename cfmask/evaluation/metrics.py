"""Per-set top-1 (and top-5) accuracy with the reference's class-subset protocol.

Every evaluation set is scored with the same 1000-way ImageNet head (reference
notes §4.3). Sets that cover fewer classes (ImageNet-R, ImageNet-A, ObjectNet)
restrict the argmax to their ``class_subset`` (§5.4); ObjectNet's targets are
multi-hot, and a prediction is correct when the target is set at the predicted
class (§5.3). The headline "OOD average" is the mean over the non-ID sets.

Module interface: :class:`~cfmask.evaluation.accuracy.SubsetAccuracy` (a torchmetrics
``Metric``, defined in :mod:`cfmask.evaluation.accuracy`), one per set, built by
:meth:`EvalSet.metric <cfmask.evaluation.eval_sets.EvalSet.metric>` or
:func:`make_test_metrics`.
Functional interface: :func:`restrict_logits`, :func:`project_logits`,
:func:`top1_correct`, :func:`topk_correct`, :func:`ood_average`.

Top-5 accuracy counts a sample as correct when a target class is among the five
highest logits of the set's classes; it is reported only for sets with more than
five classes (with five or fewer it is 1 by construction).

The set descriptions (:class:`~cfmask.evaluation.eval_sets.EvalSet`,
:func:`~cfmask.evaluation.eval_sets.describe_test_sets`) live in
:mod:`cfmask.evaluation.eval_sets` and the results table and files
(:func:`~cfmask.evaluation.reporting.results_table`,
:func:`~cfmask.evaluation.reporting.write_results`) in
:mod:`cfmask.evaluation.reporting`; all four stay
importable from here. This module does not import rich: the two reporting names are
loaded on first access.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from cfmask.evaluation.accuracy import (
    OOD_AVG,
    SubsetAccuracy,
    ood_average,
    project_logits,
    restrict_logits,
    top1_correct,
    top_k_average,
    topk_correct,
)
from cfmask.evaluation.eval_sets import EvalSet, describe_test_sets

if TYPE_CHECKING:
    from cfmask.evaluation.reporting import results_table, write_results

__all__ = (
    "OOD_AVG",
    "EvalSet",
    "SubsetAccuracy",
    "describe_test_sets",
    "make_test_metrics",
    "ood_average",
    "project_logits",
    "restrict_logits",
    "results_table",
    "top1_correct",
    "top5_results",
    "top_k_average",
    "topk_correct",
    "write_results",
)


def make_test_metrics(eval_sets: Sequence[EvalSet]) -> nn.ModuleDict:
    """One :class:`SubsetAccuracy` per set, keyed by set name (in ``eval_sets`` order).

    Args:
        eval_sets: The datamodule's :attr:`eval_sets`.

    Returns:
        A ``ModuleDict`` so the metrics follow the LightningModule's device.
    """
    return nn.ModuleDict({s.name: s.metric() for s in eval_sets})


def top5_results(eval_sets: Sequence[EvalSet], metrics: Sequence[Any]) -> dict[str, float]:
    """Top-5 accuracy of each set whose metric has one.

    Args:
        eval_sets: The test sets, in loader order.
        metrics: One :class:`~cfmask.evaluation.metrics.SubsetAccuracy` per set, same order.

    Returns:
        Set name → top-5 accuracy in ``[0, 1]``; sets with five classes or fewer
        (or an empty set) are left out.
    """
    out: dict[str, float] = {}
    for s, metric in zip(eval_sets, metrics, strict=False):
        if isinstance(metric, SubsetAccuracy):
            value = float(metric.compute_top_k())
            if not math.isnan(value):
                out[s.name] = value
    return out


#: Names kept importable from here that live in :mod:`cfmask.evaluation.reporting`
#: (loaded on access).
_REPORTING = ("results_table", "write_results")


def __getattr__(name: str) -> Any:
    if name in _REPORTING:
        return getattr(importlib.import_module("cfmask.evaluation.reporting"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

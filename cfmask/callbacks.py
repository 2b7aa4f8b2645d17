"""Lightning callbacks shipped with cfmask."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from rich.console import Console

from cfmask.metrics import (
    OOD_AVG,
    EvalSet,
    SubsetAccuracy,
    results_table,
    top_k_average,
    write_results,
)

__all__ = ("TestResultsReport",)


class TestResultsReport(pl.Callback):
    """After ``trainer.test``, print the results table and write JSON and CSV.

    Top-1 comes from the module's ``test_results``; top-5 is read from the same
    per-set metrics (``test_accuracies``, see
    :meth:`~cfmask.metrics.SubsetAccuracy.compute_top_k`) at the end of the test
    epoch, logged as ``test/<set>/acc5`` (and ``test/ood_avg/acc5``) and shown next
    to top-1. Sets with five classes or fewer have no top-5. Truncated sets and
    skipped images (when the datamodule reports them) are flagged in both, so a
    number from an incomplete set is never shown bare.

    Args:
        output_dir: Where to write ``results.json``/``results.csv``; defaults to
            the trainer's log directory.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.top5: dict[str, float] = {}

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Compute and log top-5 accuracy of every test set that has more than five classes."""
        eval_sets: Sequence[EvalSet] = getattr(pl_module, "test_eval_sets", None) or ()
        metrics: Sequence[Any] = getattr(pl_module, "test_accuracies", None) or ()
        self.top5 = _top5_results(eval_sets, metrics)
        for name, value in self.top5.items():
            pl_module.log(f"test/{name}/acc5", value, add_dataloader_idx=False)
        id_names = [s.name for s in eval_sets if s.is_id]
        if id_names and len(eval_sets) > 1:
            avg = top_k_average(self.top5, [s.name for s in eval_sets], id_names[0])
            if not math.isnan(avg):
                pl_module.log(f"test/{OOD_AVG}/acc5", avg, add_dataloader_idx=False)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report the results gathered by the module's ``on_test_epoch_end``."""
        results = getattr(pl_module, "test_results", None)
        if not results or not trainer.is_global_zero:
            return
        eval_sets = getattr(pl_module, "test_eval_sets", None)
        datamodule = getattr(trainer, "datamodule", None)
        skipped_fn = getattr(datamodule, "skipped_images", None)
        skipped = skipped_fn() if callable(skipped_fn) else None
        scored = getattr(pl_module, "test_counts", None) or None
        console = Console()
        console.print(
            results_table(
                results, eval_sets=eval_sets, skipped=skipped, scored=scored, top5=self.top5
            )
        )
        directory = self.output_dir or trainer.log_dir or trainer.default_root_dir
        json_path, csv_path = write_results(
            results, directory, eval_sets=eval_sets, skipped=skipped, scored=scored, top5=self.top5
        )
        console.print(f"results written to {json_path} and {csv_path}")


def _top5_results(eval_sets: Sequence[EvalSet], metrics: Sequence[Any]) -> dict[str, float]:
    """Top-5 accuracy of each set whose metric has one.

    Args:
        eval_sets: The test sets, in loader order.
        metrics: One :class:`~cfmask.metrics.SubsetAccuracy` per set, same order.

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

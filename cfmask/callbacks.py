"""Lightning callbacks shipped with cfmask."""

from __future__ import annotations

import lightning.pytorch as pl
from rich.console import Console

from cfmask.metrics import results_table, write_results

__all__ = ("TestResultsReport",)


class TestResultsReport(pl.Callback):
    """After ``trainer.test``, print the results table and write JSON and CSV.

    Truncated sets and skipped images (when the datamodule reports them) are
    flagged in both, so a number from an incomplete set is never shown bare.

    Args:
        output_dir: Where to write ``results.json``/``results.csv``; defaults to
            the trainer's log directory.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__()
        self.output_dir = output_dir

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
        console.print(results_table(results, eval_sets=eval_sets, skipped=skipped, scored=scored))
        directory = self.output_dir or trainer.log_dir or trainer.default_root_dir
        json_path, csv_path = write_results(
            results, directory, eval_sets=eval_sets, skipped=skipped, scored=scored
        )
        console.print(f"results written to {json_path} and {csv_path}")

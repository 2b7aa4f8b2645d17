"""Lightning callbacks shipped with cfmask."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
from rich.console import Console
from rich.table import Table

from cfmask.evaluation import EvaluationResults

__all__ = ("TestResultsReport", "results_table", "write_results")


def results_table(results: EvaluationResults, title: str = "Top-1 accuracy (%)") -> Table:
    """Render per-set accuracy and the OOD average as a rich table.

    Args:
        results: The evaluation results.
        title: Table title.

    Returns:
        A :class:`rich.table.Table` with one row per set and an OOD-average row.
    """
    table = Table(title=title)
    table.add_column("set")
    table.add_column("acc1", justify="right")
    for name, value in results.accuracy.items():
        label = f"{name} (ID)" if name == results.id_set else name
        table.add_row(label, f"{100 * value:.2f}")
    avg = results.ood_average
    if avg is not None and results.id_set is not None:
        table.add_row("OOD average", f"{100 * avg:.2f}", style="bold")
    return table


def write_results(results: EvaluationResults, directory: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.csv`` (accuracies in percent).

    Args:
        results: The evaluation results.
        directory: Output folder (created if needed).

    Returns:
        Paths of the JSON and CSV files.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "id_set": results.id_set,
        "acc1": {k: 100 * v for k, v in results.accuracy.items()},
        "ood_avg": None if results.ood_average is None else 100 * results.ood_average,
        "notes": results.notes,
    }
    json_path = out / "results.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    csv_path = out / "results.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "acc1"])
        for name, value in results.accuracy.items():
            writer.writerow([name, f"{100 * value:.4f}"])
        if payload["ood_avg"] is not None:
            writer.writerow(["ood_avg", f"{payload['ood_avg']:.4f}"])
    return json_path, csv_path


class TestResultsReport(pl.Callback):
    """After ``trainer.test``, print the results table and write JSON and CSV.

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
        if not isinstance(results, EvaluationResults) or not trainer.is_global_zero:
            return
        Console().print(results_table(results))
        directory = self.output_dir or trainer.log_dir or trainer.default_root_dir
        json_path, _ = write_results(results, directory)
        Console().print(f"results written to {json_path} (and results.csv)")

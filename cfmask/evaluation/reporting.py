"""Reporting evaluation results: a rich table for the terminal, JSON and CSV files.

Both show, per evaluation set, top-1 (and top-5 when known) accuracy, the images
found, scored and published, and the OOD average over the non-ID sets
(:func:`~cfmask.evaluation.metrics.ood_average`). A set with fewer images than published, or
with undecodable images skipped, carries a warning note, so a number from an
incomplete set is never shown bare. The accuracies come from
:class:`~cfmask.evaluation.metrics.SubsetAccuracy`; the set descriptions from
:class:`~cfmask.evaluation.eval_sets.EvalSet`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from cfmask.evaluation.accuracy import OOD_AVG, ood_average, top_k_average
from cfmask.evaluation.eval_sets import EvalSet

__all__ = ("results_table", "write_results")


def _id_name(eval_sets: Sequence[EvalSet] | None, default: str) -> str:
    for s in eval_sets or ():
        if s.is_id:
            return s.name
    return default


def _rows(
    results: Mapping[str, float],
    eval_sets: Sequence[EvalSet] | None,
    skipped: Mapping[str, Sequence[str]] | None,
    id_name: str,
    scored: Mapping[str, int] | None = None,
    top5: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    by_name = {s.name: s for s in eval_sets or ()}
    names = [s.name for s in eval_sets or () if s.name in results]
    names += [k for k in results if k not in names and k != OOD_AVG]
    rows: list[dict[str, Any]] = []
    for n in names:
        s = by_name.get(n)
        skip = len((skipped or {}).get(n, ()))
        found = None if s is None else s.num_samples
        if scored is not None and n in scored:
            count: int | None = int(scored[n])
        else:
            count = None if found is None else found - skip
        notes = []
        if s is not None and s.truncated:
            notes.append(f"TRUNCATED: {s.num_samples:,} images, published {s.expected_samples:,}")
        if skip:
            notes.append(f"{skip} undecodable image(s) skipped")
        if count is not None and found is not None and count != found - skip:
            notes.append(f"{count:,} of {found - skip:,} readable images scored")
        rows.append(
            {
                "set": n,
                "acc1": float(results[n]),
                "acc5": None if top5 is None or n not in top5 else float(top5[n]),
                "role": "id" if n == id_name else "ood",
                "num_samples": found,
                "scored": count,
                "expected_samples": None if s is None else s.expected_samples,
                "truncated": bool(s is not None and s.truncated),
                "skipped": skip,
                "note": "; ".join(notes),
            }
        )
    return rows


def results_table(
    results: Mapping[str, float],
    eval_sets: Sequence[EvalSet] | None = None,
    skipped: Mapping[str, Sequence[str]] | None = None,
    id_name: str = "imagenet",
    title: str = "Accuracy (%)",
    scored: Mapping[str, int] | None = None,
    top5: Mapping[str, float] | None = None,
) -> Table:
    """Render per-set accuracies and the OOD average as a rich table.

    Truncated sets and skipped images are flagged in a "Warning" column so a
    number from an incomplete set is never shown bare.

    Args:
        results: Set name → top-1 accuracy in ``[0, 1]``.
        eval_sets: The datamodule's :attr:`eval_sets` (for counts and flags).
        skipped: Set name → skipped image paths (``datamodule.skipped_images()``).
        id_name: Name of the ID set when ``eval_sets`` doesn't say.
        title: Table title.
        scored: Set name → number of images scored (the fine-tuner's
            ``test_counts``); default: images found minus images skipped.
        top5: Set name → top-5 accuracy; adds a "Top-5" column ("-" for sets
            without one, i.e. with five classes or fewer).

    Returns:
        The table (print it with ``rich.console.Console().print``).
    """
    id_name = _id_name(eval_sets, id_name)
    table = Table(title=title)
    table.add_column("Set")
    table.add_column("Top-1", justify="right")
    if top5 is not None:
        table.add_column("Top-5", justify="right")
    table.add_column("Images", justify="right")
    table.add_column("Warning")

    def pct(value: float | None) -> list[str]:
        if top5 is None:
            return []
        return ["-" if value is None or math.isnan(value) else f"{100 * value:.2f}"]

    for r in _rows(results, eval_sets, skipped, id_name, scored, top5):
        n, e = r["scored"], r["expected_samples"]
        count = "" if n is None else f"{n:,}" + ("" if e is None else f" / {e:,}")
        name = r["set"] + (" (ID)" if r["role"] == "id" else "")
        warn = f"[bold red]{r['note']}[/]" if r["note"] else ""
        table.add_row(name, f"{100 * r['acc1']:.2f}", *pct(r["acc5"]), count, warn)
    avg = ood_average(results, id_name)
    if not math.isnan(avg):
        table.add_section()
        avg5 = top_k_average(top5 or {}, results, id_name)
        table.add_row("OOD average", f"{100 * avg:.2f}", *pct(avg5), "", "")
    return table


def write_results(
    results: Mapping[str, float],
    directory: str | os.PathLike[str],
    eval_sets: Sequence[EvalSet] | None = None,
    skipped: Mapping[str, Sequence[str]] | None = None,
    id_name: str = "imagenet",
    stem: str = "results",
    scored: Mapping[str, int] | None = None,
    top5: Mapping[str, float] | None = None,
) -> tuple[Path, Path]:
    """Write the results as ``<stem>.json`` and ``<stem>.csv`` in ``directory``.

    The JSON holds ``{"acc1": {set: acc}, "ood_avg": …, "acc5": {set: acc or
    null}, "ood_avg_acc5": …, "sets": [row, …], "warnings": [...], "skipped":
    {set: [paths]}}``; the CSV has one row per set plus an ``ood_avg`` row, with
    columns ``set, role, acc1, acc5, num_samples, scored, expected_samples,
    truncated, skipped, note`` (``num_samples`` images were found, ``scored`` were
    scored, ``skipped`` could not be decoded). Accuracies are in ``[0, 1]``; top-5 is
    empty (``null``) for sets with five classes or fewer, and its OOD average needs
    every OOD set.

    Args:
        results: Set name → top-1 accuracy in ``[0, 1]``.
        directory: Output directory (created if needed).
        eval_sets: The datamodule's :attr:`eval_sets`.
        skipped: Set name → skipped image paths.
        id_name: Name of the ID set when ``eval_sets`` doesn't say.
        stem: File name without suffix.
        scored: Set name → number of images scored (default: found minus skipped).
        top5: Set name → top-5 accuracy in ``[0, 1]``.

    Returns:
        Paths of the JSON and CSV files.
    """
    id_name = _id_name(eval_sets, id_name)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(results, eval_sets, skipped, id_name, scored, top5)
    avg = ood_average(results, id_name)
    avg5 = top_k_average(top5 or {}, results, id_name)
    payload = {
        "acc1": {r["set"]: r["acc1"] for r in rows},
        OOD_AVG: None if math.isnan(avg) else avg,
        "acc5": {r["set"]: r["acc5"] for r in rows},
        f"{OOD_AVG}_acc5": None if math.isnan(avg5) else avg5,
        "id_set": id_name,
        "sets": rows,
        "warnings": [f"{r['set']}: {r['note']}" for r in rows if r["note"]],
        "skipped": {k: list(v) for k, v in (skipped or {}).items() if v},
    }
    json_path, csv_path = out / f"{stem}.json", out / f"{stem}.csv"
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    fields = [
        "set", "role", "acc1", "acc5", "num_samples", "scored", "expected_samples", "truncated",
        "skipped",
    ]  # fmt: skip
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=[*fields, "note"])
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in [*fields, "note"]})
        if not math.isnan(avg):
            w.writerow(
                {
                    "set": OOD_AVG,
                    "role": "ood",
                    "acc1": avg,
                    "acc5": "" if math.isnan(avg5) else avg5,
                }
            )
    return json_path, csv_path

"""The claims study's analysis, tables, report file and figures.

:func:`analyse` turns the study's cells (one per data seed and training seed, see
:mod:`cfmask.demo.study_run`) into every figure the study reports, using only the
rules fixed beforehand in :mod:`cfmask.demo.study`: each method's accuracy across
data seeds, the pre-registered paired comparisons, the matched-ID comparisons of the
best masking variant with WiSE-FT and KD, the Fig. 6 checks and the power check.
Every interval is a 95 % t-interval of the per-data-seed means (the headline), with
the pooled interval over all cells beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cfmask.demo.data import TEST_SET_DOCS
from cfmask.demo.report import ALPHA, format_interval, plot_tradeoff
from cfmask.demo.stats import Interval, mean_ci95
from cfmask.demo.study import (
    COMPARISONS,
    HALF_WIDTH_TARGET,
    StudyConfig,
    TwoLevelInterval,
    best_variant,
    fig6_reading,
    ood_at_id,
    two_level_interval,
    variance_components,
    verdict,
    wise_dominance,
)
from cfmask.evaluation.plotting import pyplot

__all__ = (
    "METHOD_LABELS",
    "OURS",
    "analyse",
    "interval_from_dict",
    "markdown_report",
    "ood_names",
    "plot_forest",
    "print_report",
    "write_outputs",
)

#: The study's "Ours" for Fig. 6 and WiSE-KD, CAM object masking (the paper's method).
OURS = "object-single"

#: Display names of the methods of the study's table, in table order.
METHOD_LABELS: dict[str, str] = {
    "zero-shot": "Zero-shot (pre-trained)",
    "vanilla": "Vanilla FT",
    "wise-ft": f"WiSE-FT {ALPHA}=0.5",
    "soup": "Uniform soup (3 learning rates)",
    "lp-ft": "LP-FT",
    "fd": "FD (no mask)",
    "kd": "KD",
    "object-single": "CAM object mask",
    "context-single": "CAM context mask",
    "random-single": "random mask",
    "object-exact-single": "exact object mask",
    "wise-kd": "WiSE-KD (object mask + KD from WiSE-FT)",
}

Record = Mapping[str, Any]


def ood_names(records: Sequence[Record]) -> list[str]:
    """The OOD test sets, in the benchmark's fixed order.

    Args:
        records: The study's cells.

    Returns:
        The names (the fixed order makes every average independent of file order).

    Raises:
        ValueError: If a cell lacks one of the benchmark's OOD sets.
    """
    names = [k for k in TEST_SET_DOCS if k != "id"]
    for rec in records:
        have = set(rec["results"]["vanilla"]["ood"])
        if have != set(names):
            raise ValueError(f"cell {rec['data_seed']}/{rec['train_seed']} has OOD sets {have}")
    return names


def _ood(result: Mapping[str, Any], ood: Sequence[str]) -> float:
    return math.fsum(float(result["ood"][k]) for k in ood) / len(ood)


def _point(rec: Record, key: str, wise_alpha: float) -> Mapping[str, Any]:
    """A cell's result for a method key (``wise-ft`` is vanilla's WiSE mixture)."""
    if key == "wise-ft":
        return next(p for p in rec["wise"]["vanilla"] if float(p["alpha"]) == wise_alpha)
    return rec["results"][key]  # type: ignore[no-any-return]


def _grouped(
    records: Sequence[Record], value: Callable[[Record], float | None]
) -> dict[int, list[float]]:
    """``{data_seed: [value of each training seed]}``, cells without a value left out."""
    out: dict[int, list[float]] = {}
    for rec in sorted(records, key=lambda r: (r["data_seed"], r["train_seed"])):
        v = value(rec)
        if v is not None:
            out.setdefault(int(rec["data_seed"]), []).append(v)
    return out


def _two_level_dict(iv: TwoLevelInterval) -> dict[str, Any]:
    return {
        "across_data_seeds": iv.across_data_seeds.as_dict(),
        "pooled_pairs": iv.pooled_pairs.as_dict(),
        "per_data_seed": {str(d): i.as_dict() for d, i in iv.per_data_seed.items()},
        "verdict": verdict(iv.across_data_seeds),
    }


def _curve(rec: Record, key: str, ood: Sequence[str]) -> list[tuple[float, float]]:
    """A cell's WiSE path of ``key``: pre-trained, the interior mixtures, the model."""
    zero = rec["results"]["zero-shot"]
    end = rec["results"][key]
    mids = sorted(rec["wise"][key], key=lambda p: float(p["alpha"]))
    return [(float(p["id"]), _ood(p, ood)) for p in (zero, *mids, end)]


def _compare(
    records: Sequence[Record],
    variant: Callable[[Record], Mapping[str, Any]],
    reference: Callable[[Record], Mapping[str, Any]],
    ood: Sequence[str],
) -> dict[str, Any]:
    """ID and OOD paired differences ``variant - reference`` at both levels."""
    out: dict[str, Any] = {}
    for metric, read in (
        ("id", lambda r: float(r["id"])),
        ("ood_avg", lambda r: _ood(r, ood)),
    ):
        deltas = _grouped(
            records,
            lambda rec, read=read: read(variant(rec)) - read(reference(rec)),  # type: ignore[misc]
        )
        out[metric] = _two_level_dict(two_level_interval(deltas))
    return out


def _matched(deltas: dict[int, list[float]], cells: int) -> dict[str, Any]:
    """Two-level reading of matched-ID differences (only the cells that could match)."""
    matched = sum(len(v) for v in deltas.values())
    out: dict[str, Any] = {"cells_matched": matched, "cells": cells}
    if not deltas:
        out["ood_avg"] = None
        return out
    out["ood_avg"] = _two_level_dict(two_level_interval(deltas))
    return out


def analyse(records: Sequence[Record], cfg: StudyConfig, ood: Sequence[str]) -> dict[str, Any]:
    """Every figure of the study, by the pre-registered rules.

    Args:
        records: One record per cell (see :func:`cfmask.demo.study_run.run_cell`).
        cfg: The study's design and choices.
        ood: The OOD set names.

    Returns:
        ``{"methods", "comparisons", "power", "matched_id", "fig6", "curves"}``, all
        JSON-ready.
    """
    half = float(cfg.wise_kd_alpha)
    methods: dict[str, Any] = {}
    for key in METHOD_LABELS:
        row: dict[str, Any] = {"label": METHOD_LABELS[key]}
        for metric, read in (
            ("id", lambda r: float(r["id"])),
            ("ood_avg", lambda r: _ood(r, ood)),
        ):
            by_seed = _grouped(
                records,
                lambda rec, read=read, key=key: read(_point(rec, key, half)),  # type: ignore[misc]
            )
            means = [math.fsum(v) / len(v) for v in by_seed.values()]
            row[metric] = {
                "across_data_seeds": mean_ci95(means).as_dict(),
                "per_data_seed": {str(d): round(m, 3) for d, m in zip(by_seed, means, strict=True)},
            }
        methods[key] = row

    def getter(key: str) -> Callable[[Record], Mapping[str, Any]]:
        return lambda rec: _point(rec, key, half)

    comparisons = []
    for comp in COMPARISONS:
        entry = _compare(records, getter(comp.variant), getter(comp.reference), ood)
        comparisons.append(
            {
                "name": comp.name,
                "variant": comp.variant,
                "reference": comp.reference,
                "claim": comp.claim,
                **entry,
            }
        )

    # Power: the two standard deviations of CAM object - FD on OOD, and the half-width
    # the study reached against the target.
    obj_fd = _grouped(
        records, lambda r: _ood(r["results"][OURS], ood) - _ood(r["results"]["fd"], ood)
    )
    vc = variance_components(obj_fd)
    reached = two_level_interval(obj_fd).across_data_seeds
    power = {
        "within_sd": round(vc.within, 4),
        "between_sd": round(vc.between, 4),
        "half_width": round((reached.ci95_high - reached.ci95_low) / 2, 4),
        "target": HALF_WIDTH_TARGET,
        "met": (reached.ci95_high - reached.ci95_low) / 2 <= HALF_WIDTH_TARGET,
    }

    # Matched ID: the best masking variant against the WiSE-FT curve at its own ID; and
    # against KD, each one's height above that curve at its own ID (the difference of
    # their OOD accuracies once each is matched to the curve's ID-OOD trade-off).
    best = best_variant({k: methods[k]["ood_avg"]["across_data_seeds"]["mean"] for k in methods})

    def excess(rec: Record, key: str) -> float | None:
        """OOD above the cell's WiSE-FT curve at the model's own ID accuracy."""
        m = rec["results"][key]
        at = ood_at_id(_curve(rec, "vanilla", ood), float(m["id"]))
        return None if at is None else _ood(m, ood) - at

    def vs_wise_ft(rec: Record) -> float | None:
        return excess(rec, best)

    def vs_kd(rec: Record) -> float | None:
        mine, theirs = excess(rec, best), excess(rec, "kd")
        return None if mine is None or theirs is None else mine - theirs

    matched = {
        "best": best,
        "best_label": METHOD_LABELS[best],
        "rule": "highest across-data-seeds mean OOD among CAM object, CAM context and random "
        "masks (ties: that order)",
        "minus_wise_ft_at_matched_id": _matched(_grouped(records, vs_wise_ft), len(records)),
        "minus_kd_at_matched_id": _matched(_grouped(records, vs_kd), len(records)),
        "minus_wise_ft": _compare(records, getter(best), getter("wise-ft"), ood),
        "minus_kd": _compare(records, getter(best), getter("kd"), ood),
    }

    # Fig. 6: WiSE of Ours at each interior alpha minus Ours; WiSE-KD minus Ours.
    per_alpha: dict[str, Any] = {}
    readings: dict[float, str] = {}
    for alpha in cfg.wise_alphas:

        def wise_ours(rec: Record, alpha: float = float(alpha)) -> Mapping[str, Any]:
            return next(p for p in rec["wise"][OURS] if float(p["alpha"]) == alpha)

        entry = _compare(records, wise_ours, getter(OURS), ood)
        reading = wise_dominance(
            interval_from_dict(entry["id"]["across_data_seeds"]),
            interval_from_dict(entry["ood_avg"]["across_data_seeds"]),
        )
        readings[float(alpha)] = reading
        per_alpha[f"{alpha:g}"] = {**entry, "reading": reading}
    fig6 = {
        "ours": OURS,
        "wise_ours_minus_ours": per_alpha,
        "wise_ours_reading": fig6_reading(readings),
        "wise_kd_minus_ours": _compare(records, getter("wise-kd"), getter(OURS), ood),
    }

    def mean_curve(key: str) -> list[dict[str, float]]:
        paths = [_curve(rec, key, ood) for rec in records]
        alphas = [0.0, *sorted(float(a) for a in cfg.wise_alphas), 1.0]
        return [
            {
                "alpha": a,
                "id": round(math.fsum(p[i][0] for p in paths) / len(paths), 3),
                "ood_avg": round(math.fsum(p[i][1] for p in paths) / len(paths), 3),
            }
            for i, a in enumerate(alphas)
        ]

    return {
        "methods": methods,
        "comparisons": comparisons,
        "power": power,
        "matched_id": matched,
        "fig6": fig6,
        "curves": {"WiSE-FT": mean_curve("vanilla"), "WiSE-Ours": mean_curve(OURS)},
        "cells": [
            {"data_seed": r["data_seed"], "train_seed": r["train_seed"], "results": r["results"]}
            for r in records
        ],
    }


def interval_from_dict(d: Mapping[str, Any]) -> Interval:
    """The :class:`~cfmask.demo.stats.Interval` of an ``Interval.as_dict()`` mapping."""

    def num(x: Any) -> float:
        return math.nan if x is None else float(x)

    return Interval(float(d["mean"]), num(d["ci95_low"]), num(d["ci95_high"]), int(d["n"]))


# ------------------------------------------------------------------------ printing
def _rows(payload: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(name, comparison)`` rows: the pre-registered ones, then Fig. 6's WiSE-KD."""
    rows = [(c["name"], c) for c in payload["comparisons"]]
    m = payload["matched_id"]
    rows.append((f"{m['best_label']} - WiSE-FT {ALPHA}=0.5", m["minus_wise_ft"]))
    rows.append((f"{m['best_label']} - KD", m["minus_kd"]))
    rows.append(("WiSE-KD - CAM object", payload["fig6"]["wise_kd_minus_ours"]))
    return rows


def print_report(console: Console, payload: Mapping[str, Any]) -> None:
    """Print the study's tables.

    Args:
        console: Where to print.
        payload: The content of ``study.json``.
    """
    design = payload["design"]
    n_d, n_s = len(design["data_seeds"]), design["train_seeds"]
    table = Table(
        title=f"Accuracy (%): mean over {n_d} data seeds of the per-draw means "
        f"({n_s} training seeds each) [95% interval over data seeds]",
        header_style="bold",
    )
    for col in ("method", "ID test", "OOD avg"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in payload["methods"].values():
        table.add_row(
            row["label"],
            format_interval(row["id"]["across_data_seeds"]),
            format_interval(row["ood_avg"]["across_data_seeds"]),
        )
    console.print(table)
    comp = Table(
        title="Paired differences (accuracy points): across data seeds [95%] | pooled pairs "
        "[95%] | reading",
        header_style="bold",
    )
    for col in ("comparison", "ID", "OOD avg", "OOD pooled", "OOD reading"):
        comp.add_column(col, justify="left" if col == "comparison" else "right")
    for name, entry in _rows(payload):
        comp.add_row(
            name,
            format_interval(entry["id"]["across_data_seeds"]),
            format_interval(entry["ood_avg"]["across_data_seeds"]),
            format_interval(entry["ood_avg"]["pooled_pairs"]),
            entry["ood_avg"]["verdict"],
        )
    console.print(comp)
    for line in _summary_lines(payload):
        console.print(line)


def _summary_lines(payload: Mapping[str, Any]) -> list[str]:
    m = payload["matched_id"]
    lines = [f"Best masking variant (pre-registered rule): {m['best_label']}."]
    for key, what in (
        ("minus_wise_ft_at_matched_id", "minus the WiSE-FT curve at its ID"),
        ("minus_kd_at_matched_id", "minus KD, each above the WiSE-FT curve at its own ID"),
    ):
        e = m[key]
        if e["ood_avg"] is None:
            lines.append(f"Matched ID, {what}: no cell could be matched.")
            continue
        iv = e["ood_avg"]["across_data_seeds"]
        lines.append(
            f"Matched ID, {what}: OOD {format_interval(iv)} "
            f"({e['cells_matched']} of {e['cells']} cells matched), {e['ood_avg']['verdict']}."
        )
    fig6 = payload["fig6"]
    for alpha, e in fig6["wise_ours_minus_ours"].items():
        lines.append(
            f"Fig. 6: WiSE-Ours {ALPHA}={alpha} minus Ours: ID "
            f"{format_interval(e['id']['across_data_seeds'])}, OOD "
            f"{format_interval(e['ood_avg']['across_data_seeds'])}: {e['reading']}."
        )
    lines.append(
        f"Fig. 6 check (WiSE-Ours does not dominate Ours at any {ALPHA}): "
        f"{fig6['wise_ours_reading']}."
    )
    p = payload["power"]
    lines.append(
        f"Power: CAM object - FD OOD half-width {p['half_width']:.3f} (target "
        f"{p['target']:.2f}: {'met' if p['met'] else 'not met'}); training-seed s.d. "
        f"{p['within_sd']:.3f}, between-draw s.d. {p['between_sd']:.3f}."
    )
    return lines


def markdown_report(payload: Mapping[str, Any]) -> str:
    """The study's tables as Markdown (``study.md``).

    Args:
        payload: The content of ``study.json``.

    Returns:
        The Markdown text.
    """
    design = payload["design"]
    out = [
        f"# Claims study: {len(design['data_seeds'])} data seeds "
        f"({', '.join(str(d) for d in design['data_seeds'])}) x {design['train_seeds']} "
        "training seeds",
        "",
        "Accuracy (%), mean over data seeds of the per-draw means, [95 % interval over "
        "data seeds]:",
        "",
        "| method | ID test | OOD avg |",
        "|---|---:|---:|",
    ]
    for row in payload["methods"].values():
        out.append(
            f"| {row['label']} | {format_interval(row['id']['across_data_seeds'])} | "
            f"{format_interval(row['ood_avg']['across_data_seeds'])} |"
        )
    out += [
        "",
        "Paired differences (accuracy points), across data seeds [95 %] and pooled pairs:",
        "",
        "| comparison | Δ ID | Δ OOD avg | Δ OOD pooled pairs | OOD reading |",
        "|---|---:|---:|---:|---|",
    ]
    for name, e in _rows(payload):
        out.append(
            f"| {name} | {format_interval(e['id']['across_data_seeds'])} | "
            f"{format_interval(e['ood_avg']['across_data_seeds'])} | "
            f"{format_interval(e['ood_avg']['pooled_pairs'])} | {e['ood_avg']['verdict']} |"
        )
    out += ["", *[f"- {line}" for line in _summary_lines(payload)], ""]
    t = payload["timings"]
    env = payload["environment"]
    out.append(
        f"Wall time {t['total_s']:.0f} s ({t['cells_run_now']} cells run, "
        f"{t['cells_resumed']} resumed); torch {env.get('torch')}, "
        f"{env.get('threads')} thread(s) per run, workers {design['workers']}."
    )
    return "\n".join(out) + "\n"


def plot_forest(path: Path, payload: Mapping[str, Any]) -> None:
    """Forest plot of the OOD comparisons: one row each, across data seeds and per draw.

    Each row shows the across-data-seeds mean and 95 % interval (thick), the pooled
    pairs' interval (thin, just below) and each data seed's mean difference (dots).

    Args:
        path: PNG file to write.
        payload: The content of ``study.json``.
    """
    plt = pyplot()
    rows = _rows(payload)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.2))
    for i, (_, e) in enumerate(rows):
        y = len(rows) - 1 - i
        head = e["ood_avg"]["across_data_seeds"]
        pooled = e["ood_avg"]["pooled_pairs"]
        if head["ci95_low"] is not None:
            ax.plot([head["ci95_low"], head["ci95_high"]], [y, y], color="C0", lw=3)
        ax.plot(head["mean"], y, "o", color="C0")
        if pooled["ci95_low"] is not None:
            ax.plot([pooled["ci95_low"], pooled["ci95_high"]], [y - 0.2, y - 0.2], color="C1", lw=1)
        dots = [d["mean"] for d in e["ood_avg"]["per_data_seed"].values()]
        ax.plot(dots, [y + 0.2] * len(dots), ".", color="0.5", ms=4)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [name for name, _ in reversed(rows)], fontsize=8)
    ax.set_xlabel("OOD-average difference (points)")
    ax.set_title(
        "Paired differences: across data seeds (blue, 95 %), pooled pairs (orange), "
        "each data seed (grey)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tradeoff_points(payload: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, row in payload["methods"].items():
        out[key] = {m: dict(row[m]["across_data_seeds"]) for m in ("id", "ood_avg")}
    return out


def write_outputs(output: Path, payload: Mapping[str, Any]) -> None:
    """Write ``study.json``, ``study.md`` and the two figures.

    Args:
        output: The study's folder.
        payload: The content of ``study.json``.
    """
    (output / "study.json").write_text(json.dumps(payload, indent=1) + "\n")
    (output / "study.md").write_text(markdown_report(payload))
    labels = {k: row["label"] for k, row in payload["methods"].items()}
    keys = list(payload["methods"])
    masking = [
        "zero-shot",
        "vanilla",
        "fd",
        "object-single",
        "context-single",
        "random-single",
        "object-exact-single",
    ]
    baselines = [k for k in keys if k not in masking[3:]] + ["object-single"]
    plot_tradeoff(
        output / "study-tradeoff.png",
        _tradeoff_points(payload),
        labels,
        payload["curves"],
        masking,
        baselines,
    )
    plot_forest(output / "study-forest.png", payload)

"""Tables, files and figures of the demo: the Table 3-like summary, results.json/CSV, plots."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from cfmask.demo.stats import Check, Interval, mean_ci95

#: The Greek letter alpha, spelled by name so that linters see no look-alike.
ALPHA = "\N{GREEK SMALL LETTER ALPHA}"

__all__ = (
    "ALPHA",
    "MethodResult",
    "aggregate",
    "delta_table",
    "format_interval",
    "ood_avg",
    "regime_table",
    "mask_quality_table",
    "plot_examples",
    "plot_tradeoff",
    "results_table",
    "markdown_report",
    "write_csv",
    "write_json",
)

#: ``{"val": float, "id": float, "ood": {set: float}}`` for one method and one seed.
SeedResult = dict[str, Any]
#: ``{"id": {"mean", "std"}, "ood": {set: {"mean", "std"}}, "ood_avg": {...}, ...}``.
MethodResult = dict[str, Any]


def _stat(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    iv = mean_ci95([float(v) for v in arr]).as_dict()
    return {
        "mean": round(float(arr.mean()), 2),
        "std": round(std, 2),
        "n": len(arr),
        "ci95_low": iv["ci95_low"],
        "ci95_high": iv["ci95_high"],
    }


def aggregate(per_seed: Sequence[SeedResult], ood_names: Sequence[str]) -> MethodResult:
    """Average one method's per-seed accuracies (in %) into mean and sample std.

    Args:
        per_seed: One dict per seed with ``val`` (may be ``None``), ``id`` and ``ood``.
        ood_names: OOD set names, in report order.

    Returns:
        ``{"val", "id", "ood": {name: stat}, "ood_avg", "seeds"}``; each stat is
        ``{"mean", "std", "n", "ci95_low", "ci95_high"}`` (sample std; t-interval of
        the mean, ``None`` with one seed); ``ood_avg`` is computed per seed, then averaged.
    """
    vals = [r["val"] for r in per_seed if r.get("val") is not None]
    return {
        "val": _stat(vals) if vals else None,
        "id": _stat([r["id"] for r in per_seed]),
        "ood": {k: _stat([r["ood"][k] for r in per_seed]) for k in ood_names},
        "ood_avg": _stat([float(np.mean([r["ood"][k] for k in ood_names])) for r in per_seed]),
        "seeds": list(per_seed),
    }


def _fmt(stat: Mapping[str, float] | None, best: float | None = None) -> str:
    if stat is None:
        return "-"
    text = f"{stat['mean']:.1f}"
    if stat.get("n", 1) > 1:
        text += f" ± {stat['std']:.1f}"
    if best is not None and math.isclose(stat["mean"], best, abs_tol=1e-9):
        text = f"[bold]{text}[/bold]"
    return text


def results_table(
    methods: Mapping[str, MethodResult],
    labels: Mapping[str, str],
    ood_names: Sequence[str],
    title: str,
) -> Table:
    """Build the Table 3-like rich table: validation, ID, each OOD set and the OOD average.

    Args:
        methods: Aggregated results by method key.
        labels: Display name by method key.
        ood_names: OOD set names, in column order.
        title: Table title.

    Returns:
        A :class:`rich.table.Table`; the best mean of every column is bold.
    """
    table = Table(title=title, header_style="bold")
    table.add_column("method")
    cols = ["val", "id", *ood_names, "ood_avg"]
    for c in cols:
        table.add_column(
            {"val": "ID val", "id": "ID test", "ood_avg": "OOD avg"}.get(c, c), justify="right"
        )

    def get(res: MethodResult, c: str) -> Mapping[str, float] | None:
        if c in ("val", "id", "ood_avg"):
            value: Mapping[str, float] | None = res[c]
            return value
        stat: Mapping[str, float] = res["ood"][c]
        return stat

    best: dict[str, float] = {}
    for c in cols:
        means = [s["mean"] for r in methods.values() if (s := get(r, c)) is not None]
        if means:
            best[c] = max(means)
    for key, res in methods.items():
        table.add_row(labels.get(key, key), *(_fmt(get(res, c), best.get(c)) for c in cols))
    return table


def mask_quality_table(rows: Sequence[Mapping[str, float]]) -> Table:
    """Build the Table 2-like table of CAM object masking against the exact garment masks.

    Args:
        rows: One mapping per threshold with ``threshold``, ``image_mr``, ``object_mr``,
            ``iou`` (fractions) and ``n`` (images measured).

    Returns:
        A :class:`rich.table.Table` with one column per threshold.
    """
    table = Table(
        title="Object masking vs. the exact garment mask (measured during training)",
        header_style="bold",
    )
    table.add_column("threshold")
    for r in rows:
        table.add_column(f"{r['threshold']:.1f}", justify="right")
    for key, name in (("image_mr", "image MR"), ("object_mr", "object MR"), ("iou", "IoU")):
        table.add_row(name, *(f"{r[key]:.2f}" for r in rows))
    if rows:
        table.caption = f"averaged over {int(rows[0]['n'])} training images"
    return table


def ood_avg(result: Mapping[str, Any], ood_names: Sequence[str]) -> float:
    """The mean accuracy over the OOD sets of one per-seed result."""
    return float(np.mean([result["ood"][k] for k in ood_names]))


def regime_table(checks: Sequence[Check]) -> Table:
    """Build the table of the pre-registered regime checks (R1-R4).

    Args:
        checks: From :func:`cfmask.demo.stats.regime_checks`.

    Returns:
        A :class:`rich.table.Table` with value, threshold and pass/fail per check.
    """
    table = Table(
        title="Regime checks (pre-registered; zero-shot, vanilla, WiSE-FT 0.5 and FD only)",
        header_style="bold",
    )
    for col, just in (("check", "left"), ("value", "right"), ("threshold", "right"), ("", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for c in checks:
        fmt = "{:.3f}" if c.name.startswith("R1") else "{:+.1f}"
        table.add_row(
            c.name,
            fmt.format(c.value),
            f"{c.direction} " + fmt.format(c.threshold),
            "[green]pass[/green]" if c.passed else "[red]FAIL[/red]",
        )
    return table


def _iv(iv: Interval) -> str:
    if iv.n < 2:
        return f"{iv.mean:+.2f} (1 seed, no CI)"
    return f"{iv.mean:+.2f} [{iv.ci95_low:+.2f}, {iv.ci95_high:+.2f}]"


def delta_table(
    deltas: Mapping[str, Mapping[str, Interval]], labels: Mapping[str, str], title: str
) -> Table:
    """Build the table of paired differences to FD: mean and 95 % t-interval over seeds.

    Args:
        deltas: ``{method: {"id": Interval, "ood_avg": Interval}}``.
        labels: Display names.
        title: Table title.

    Returns:
        A :class:`rich.table.Table`.
    """
    table = Table(title=title, header_style="bold")
    table.add_column("method")
    table.add_column("Δ ID vs FD", justify="right")
    table.add_column("Δ OOD avg vs FD", justify="right")
    table.add_column("n", justify="right")
    for key, d in deltas.items():
        table.add_row(labels.get(key, key), _iv(d["id"]), _iv(d["ood_avg"]), str(d["id"].n))
    return table


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON."""
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_csv(
    path: Path,
    methods: Mapping[str, MethodResult],
    labels: Mapping[str, str],
    ood_names: Sequence[str],
) -> None:
    """Write one row per method with mean and std of every column.

    Args:
        path: Output file.
        methods: Aggregated results.
        labels: Display names.
        ood_names: OOD set names.
    """
    cols = ["val", "id", *ood_names, "ood_avg"]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["method", "label", "seeds"] + [f"{c}_{s}" for c in cols for s in ("mean", "std")]
        )
        for key, res in methods.items():
            row: list[Any] = [key, labels.get(key, key), res["id"]["n"]]
            for c in cols:
                stat = res["ood"][c] if c in res["ood"] else res[c]
                row += ["", ""] if stat is None else [stat["mean"], stat["std"]]
            writer.writerow(row)


def _half_width(stat: Mapping[str, Any]) -> float:
    """Half-width of a stat's 95 % interval (0 when undefined)."""
    low, high = stat.get("ci95_low"), stat.get("ci95_high")
    if low is None or high is None:
        return 0.0
    return float(high - low) / 2


def _with_ci_bars(points: Mapping[str, MethodResult]) -> dict[str, MethodResult]:
    """Copy ``points`` with each ID and OOD-average ``std`` replaced by its 95 % half-width.

    :func:`cfmask.evaluation.plotting.draw_tradeoff` draws ``std`` as the error bar; the demo
    draws the confidence interval of the mean instead (0 with one seed).
    """
    out: dict[str, MethodResult] = {}
    for key, r in points.items():
        out[key] = {
            **r,
            "id": {**r["id"], "std": _half_width(r["id"])},
            "ood_avg": {**r["ood_avg"], "std": _half_width(r["ood_avg"])},
        }
    return out


def plot_tradeoff(
    path: Path,
    points: Mapping[str, MethodResult],
    labels: Mapping[str, str],
    curves: Mapping[str, Sequence[Mapping[str, float]]],
    left_keys: Sequence[str],
    right_keys: Sequence[str],
) -> None:
    """Draw ID vs OOD-average accuracy, the analogue of the paper's Fig. 5 and Fig. 6.

    Args:
        path: PNG file to write.
        points: Aggregated results; each is drawn at (ID mean, OOD-avg mean) with bars
            of the 95 % t-interval of each mean over seeds (none with one seed).
        labels: Display names.
        curves: Name -> list of ``{"alpha", "id", "ood_avg"}`` (WiSE-FT, WiSE-Ours),
            drawn on both panels.
        left_keys: Methods of the left panel (masking and refilling strategies).
        right_keys: Methods of the right panel (WiSE integrations and baselines).
    """
    from cfmask.evaluation.plotting import draw_tradeoff, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, keys, title in (
        (axes[0], left_keys, "Masking and refilling strategies (cf. Fig. 5)"),
        (axes[1], right_keys, "Integration with WiSE-FT (cf. Fig. 6)"),
    ):
        draw_tradeoff(ax, curves, _with_ci_bars(points), labels, keys, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_examples(
    path: Path,
    bench: Any,
    backbone: Any,
    object_threshold: float,
    context_threshold: float,
    n: int = 6,
) -> None:
    """Draw training images with their relevance map, masks and counterfactuals.

    Columns: the image; the relevance map of the pre-trained model (the student at
    step 0) for the true class; the exact garment mask; the object mask and its
    single-fill counterfactual; the context mask and its single-fill counterfactual;
    the multi-fill counterfactual of the object mask. Everything is computed with the
    library's own relevance map, maskers and refillers.

    Args:
        path: PNG file to write.
        bench: The :class:`~cfmask.demo.data.Benchmark`.
        backbone: The pre-trained :class:`~cfmask.backbones.timm_vit.TimmViT`.
        object_threshold: CAM threshold of the object mask.
        context_threshold: CAM threshold of the context mask.
        n: Number of rows (one image of each of the first ``n`` classes).
    """
    import torch

    from cfmask.evaluation.plotting import pyplot

    plt = pyplot()

    from cfmask.demo.data import CLASS_NAMES
    from cfmask.functional.patches import patch_mask_to_pixels
    from cfmask.masking import ContextMasker, MultiImageRefiller, ObjectMasker, SingleImageRefiller
    from cfmask.relevance import AttentionGradRelevance

    labels = bench.train.labels
    rows = [int(torch.nonzero(labels == c)[0]) for c in range(min(n, 10))]
    images = bench.train.float_images()[rows]
    targets = labels[rows]
    torch.manual_seed(0)
    scores = AttentionGradRelevance()(backbone, images, targets)
    grid, patch = backbone.grid_size, backbone.patch_size
    obj = ObjectMasker(object_threshold)(scores, len(rows), grid, images.device)
    ctx = ContextMasker(context_threshold)(scores, len(rows), grid, images.device)
    cf_obj = SingleImageRefiller()(images, obj, patch).images
    cf_ctx = SingleImageRefiller()(images, ctx, patch).images
    cf_multi = MultiImageRefiller()(images, obj, patch).images
    side = images.shape[-1]
    heat = scores.reshape(-1, *grid)
    obj_px = patch_mask_to_pixels(obj, grid, patch).reshape(-1, side, side)
    ctx_px = patch_mask_to_pixels(ctx, grid, patch).reshape(-1, side, side)
    gt = bench.train.object_masks[rows]
    titles = [
        "image",
        "relevance (pre-trained)",
        "true garment",
        f"object mask t={object_threshold}",
        "object, single-fill",
        f"context mask t={context_threshold}",
        "context, single-fill",
        "object, multi-fill",
    ]
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(1.6 * len(titles), 1.7 * len(rows)))
    for r in range(len(rows)):
        panels = [
            (images[r].permute(1, 2, 0), None),
            (heat[r], "inferno"),
            (gt[r].float(), "gray"),
            (images[r].permute(1, 2, 0) * (1 - 0.7 * obj_px[r].float()[..., None]), None),
            (cf_obj[r].permute(1, 2, 0), None),
            (images[r].permute(1, 2, 0) * (1 - 0.7 * ctx_px[r].float()[..., None]), None),
            (cf_ctx[r].permute(1, 2, 0), None),
            (cf_multi[r].permute(1, 2, 0), None),
        ]
        for c, (img, cmap) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(
                img.detach().cpu().numpy(), cmap=cmap, interpolation="nearest", vmin=0, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=7)
        axes[r, 0].set_ylabel(CLASS_NAMES[int(targets[r])], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_stat(stat: Mapping[str, Any] | None) -> str:
    if stat is None:
        return "-"
    text = f"{stat['mean']:.1f}"
    if stat.get("n", 1) > 1:
        text += f" ± {stat['std']:.1f}"
    return text


def format_interval(iv: Mapping[str, Any]) -> str:
    """``"+0.58 [+0.12, +1.04]"`` from an interval's dict (just the mean without a CI).

    Example:
        >>> format_interval({"mean": 0.5, "ci95_low": -0.25, "ci95_high": 1.0})
        '+0.50 [-0.25, +1.00]'
    """
    if iv["ci95_low"] is None:
        return f"{iv['mean']:+.2f}"
    return f"{iv['mean']:+.2f} [{iv['ci95_low']:+.2f}, {iv['ci95_high']:+.2f}]"


def markdown_report(payload: Mapping[str, Any]) -> str:
    """Render the regime checks, the results, the differences to FD and the mask table.

    The same tables the run printed, as Markdown (the README and ``docs/demo.md``
    are regenerated from this file).

    Args:
        payload: The content of ``results.json``.

    Returns:
        Markdown text.
    """
    ood = payload["benchmark"]["ood_sets"]
    labels = payload["labels"]
    lines = ["| check | value | threshold | pass |", "|---|---:|---:|---|"]
    for name, c in payload["regime"].items():
        fmt = "{:.3f}" if name.startswith("R1") else "{:+.1f}"
        lines.append(
            f"| {name} | {fmt.format(c['value'])} | {c['direction']} "
            f"{fmt.format(c['threshold'])} | {'pass' if c['pass'] else '**fail**'} |"
        )
    lines += ["", "| method | ID val | ID test | " + " | ".join(ood) + " | OOD avg |"]
    lines.append("|---|" + "---:|" * (len(ood) + 3))
    for key, res in payload["methods"].items():
        cells = [_md_stat(res["val"]), _md_stat(res["id"])]
        cells += [_md_stat(res["ood"][k]) for k in ood] + [_md_stat(res["ood_avg"])]
        lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
    beta = payload["selection"]["beta"]
    tables = [(f"{beta:g}", payload["delta_vs_fd"])]
    tables += [
        (b, d) for b, d in payload.get("delta_vs_fd_by_beta", {}).items() if b != f"{beta:g}"
    ]
    lines += ["", "| β | method | Δ ID vs FD | Δ OOD avg vs FD | n |", "|---:|---|---:|---:|---:|"]
    for b, deltas in tables:
        for key, d in deltas.items():
            lines.append(
                f"| {b} | {labels.get(key, key)} | {format_interval(d['id'])} | "
                f"{format_interval(d['ood_avg'])} | {d['id']['n']} |"
            )
    rows = payload["mask_quality"]["rows"]
    if rows:
        lines += ["", "| threshold | " + " | ".join(f"{r['threshold']:.1f}" for r in rows) + " |"]
        lines.append("|---|" + "---:|" * len(rows))
        for key, name in (("image_mr", "image MR"), ("object_mr", "object MR"), ("iou", "IoU")):
            lines.append(f"| {name} | " + " | ".join(f"{r[key]:.2f}" for r in rows) + " |")
    lines += ["", payload["headline"], ""]
    if payload.get("headline_exact_mask"):
        lines += ["Ceiling: " + payload["headline_exact_mask"], ""]
    for key, gap in payload.get("exact_mask_minus", {}).items():
        lines += [
            f"Exact mask minus {labels.get(key, key)}: OOD avg "
            f"{format_interval(gap['ood_avg'])}, ID {format_interval(gap['id'])}",
            "",
        ]
    gap = payload.get("cached_teacher_minus_student")
    if gap:
        lines += [
            f"Cached teacher map minus student map ({labels.get('object-single')}): OOD avg "
            f"{format_interval(gap['ood_avg'])}, ID {format_interval(gap['id'])}",
            "",
        ]
    return "\n".join(lines)

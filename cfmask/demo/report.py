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

#: The Greek letter alpha, spelled by name so that linters see no look-alike.
ALPHA = "\N{GREEK SMALL LETTER ALPHA}"

__all__ = (
    "ALPHA",
    "MethodResult",
    "aggregate",
    "mask_quality_table",
    "plot_examples",
    "plot_tradeoff",
    "results_table",
    "write_csv",
    "write_json",
)

#: ``{"val": float, "id": float, "ood": {set: float}}`` for one method and one seed.
SeedResult = dict[str, Any]
#: ``{"id": {"mean", "std"}, "ood": {set: {"mean", "std"}}, "ood_avg": {...}, ...}``.
MethodResult = dict[str, Any]


def _stat(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": round(float(arr.mean()), 2), "std": round(std, 2), "n": len(arr)}


def aggregate(per_seed: Sequence[SeedResult], ood_names: Sequence[str]) -> MethodResult:
    """Average one method's per-seed accuracies (in %) into mean and sample std.

    Args:
        per_seed: One dict per seed with ``val`` (may be ``None``), ``id`` and ``ood``.
        ood_names: OOD set names, in report order.

    Returns:
        ``{"val", "id", "ood": {name: stat}, "ood_avg", "seeds"}``; each stat is
        ``{"mean", "std", "n"}``; ``ood_avg`` is computed per seed, then averaged.
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
        points: Aggregated results; each is drawn at (ID mean, OOD-avg mean) with std bars.
        labels: Display names.
        curves: Name -> list of ``{"alpha", "id", "ood_avg"}`` (WiSE-FT, WiSE-Ours),
            drawn on both panels.
        left_keys: Methods of the left panel (masking and refilling strategies).
        right_keys: Methods of the right panel (WiSE integrations and baselines).
    """
    from cfmask.plotting import draw_tradeoff, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, keys, title in (
        (axes[0], left_keys, "Masking and refilling strategies (cf. Fig. 5)"),
        (axes[1], right_keys, "Integration with WiSE-FT (cf. Fig. 6)"),
    ):
        draw_tradeoff(ax, curves, points, labels, keys, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_examples(path: Path, bench: Any, runner: Any, profile: Any, n: int = 6) -> None:
    """Draw training images with their relevance map, masks and counterfactuals.

    Columns: the image; the relevance map of the pre-trained model (the student at
    step 0) for the true class; the exact garment mask; the object mask and its
    single-fill counterfactual; the context mask and its single-fill counterfactual;
    the multi-fill counterfactual of the object mask. Everything is computed with the
    library's own relevance map, maskers and refillers.

    Args:
        path: PNG file to write.
        bench: The :class:`~cfmask.demo.data.Benchmark`.
        runner: The :class:`~cfmask.demo.runner.Runner` (gives the backbone and thresholds).
        profile: The :class:`~cfmask.demo.runner.Profile`.
        n: Number of rows (one image of each of the first ``n`` classes).
    """
    import torch

    from cfmask.plotting import pyplot

    plt = pyplot()

    from cfmask.demo.data import CLASS_NAMES
    from cfmask.functional.patches import patch_mask_to_pixels
    from cfmask.masking import ContextMasker, MultiImageRefiller, ObjectMasker, SingleImageRefiller
    from cfmask.relevance import AttentionGradRelevance

    labels = bench.train.labels
    rows = [int(torch.nonzero(labels == c)[0]) for c in range(min(n, 10))]
    images = bench.train.float_images()[rows]
    targets = labels[rows]
    backbone = runner.backbone()
    ft = profile.finetune
    torch.manual_seed(0)
    scores = AttentionGradRelevance()(backbone, images, targets)
    grid, patch = backbone.grid_size, backbone.patch_size
    obj = ObjectMasker(ft.object_threshold)(scores, len(rows), grid, images.device)
    ctx = ContextMasker(ft.context_threshold)(scores, len(rows), grid, images.device)
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
        f"object mask t={ft.object_threshold}",
        "object, single-fill",
        f"context mask t={ft.context_threshold}",
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

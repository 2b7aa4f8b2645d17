"""Orchestration of ``cfmask demo``: data, teacher, every method, table, files and figures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cfmask.demo import report
from cfmask.demo.data import (
    TEST_SET_DOCS,
    Benchmark,
    DatasetNotFoundError,
    build_benchmark,
    load_fashion_mnist,
)
from cfmask.demo.runner import PROFILES, MaskQualityMeter, Profile, Runner, method_specs
from cfmask.demo.teacher import load_or_pretrain_teacher

__all__ = ("build_parser", "main", "run_demo")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cfmask demo``."""
    parser = argparse.ArgumentParser(
        prog="cfmask demo",
        description="Shifted Fashion-MNIST: an offline, CPU-sized version of the paper's "
        "experiment (pre-trained teacher, spurious-cue fine-tuning data, ID and five OOD "
        "test sets, every method on the same seeds).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small profile (1 seed, fewer images and steps; < 3 min on 2 cores)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("cfmask-demo-output"),
        help="output folder (results.json, results.csv, figures, cached teacher)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the Fashion-MNIST IDX files (or torchvision's "
        "FashionMNIST/raw layout below it)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="number of training seeds (default: 2, or 1 with --quick)",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never try to apt-get install dataset-fashion-mnist",
    )
    return parser


def _dataset_table(bench: Benchmark) -> Table:
    table = Table(title="Shifted Fashion-MNIST", header_style="bold")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("what it is")
    table.add_row(
        "pre-training",
        str(len(bench.pretrain)),
        "teacher's data: background family independent of the class",
    )
    table.add_row(
        "fine-tuning",
        str(len(bench.train)),
        f"background = the class's cue family with p={bench.config.cue_strength}",
    )
    table.add_row("ID validation", str(len(bench.val)), "same as fine-tuning; model selection")
    for name, doc in TEST_SET_DOCS.items():
        table.add_row(f"test: {name}", str(len(bench.tests[name])), doc)
    return table


def _mean_curve(
    curves: Sequence[Sequence[dict[str, Any]]], ood: Sequence[str]
) -> list[dict[str, float]]:
    """Average WiSE curves of several seeds point by point."""
    out = []
    for points in zip(*curves, strict=True):
        out.append(
            {
                "alpha": float(points[0]["alpha"]),
                "id": float(np.mean([p["id"] for p in points])),
                "ood_avg": float(np.mean([np.mean([p["ood"][k] for k in ood]) for p in points])),
            }
        )
    return out


def run_demo(
    profile: Profile,
    output: Path,
    data_dir: Path | None = None,
    console: Console | None = None,
    *,
    allow_install: bool = True,
) -> dict[str, Any]:
    """Run the whole demo and write its files.

    Args:
        profile: Sizes and recipes (see :data:`~cfmask.demo.runner.PROFILES`).
        output: Output folder.
        data_dir: Extra folder to search for Fashion-MNIST.
        console: Where to print (a new :class:`rich.console.Console` by default).
        allow_install: Whether a missing dataset may be installed with apt-get.

    Returns:
        The content written to ``results.json``.
    """
    console = console or Console()
    t_start = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    raw = load_fashion_mnist(data_dir, allow_install=allow_install)
    bench = build_benchmark(profile.bench, raw)
    ood = bench.ood_names
    console.print(_dataset_table(bench))
    ft = profile.finetune
    specs = method_specs()
    n_runs = len(ft.betas) + profile.seeds * len(specs) - 1
    timings: dict[str, float] = {}

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        overall = progress.add_task("[bold]fine-tuning runs", total=n_runs)
        step_task: list[TaskID] = []

        def start(description: str, total: int) -> None:
            if step_task:
                progress.remove_task(step_task.pop())
            step_task.append(progress.add_task(f"  {description}", total=total))

        def advance() -> None:
            progress.advance(step_task[-1])

        def done(what: str, res: dict[str, Any]) -> None:
            progress.advance(overall)
            progress.console.print(
                f"  {what}: val {res['val']:.1f}  ID {res['id']:.1f}  OOD avg "
                f"{np.mean([res['ood'][k] for k in ood]):.1f}  ({res.get('seconds', 0):.0f} s)"
            )

        # 1. The pre-trained teacher.
        t0 = time.perf_counter()
        data_key = json.dumps(dataclasses.asdict(profile.bench), sort_keys=True)
        start("pre-training the teacher", 1)
        teacher_task = step_task[-1]

        def on_step(step: int, total: int) -> None:
            progress.update(teacher_task, completed=step, total=total)

        teacher_path, trained = load_or_pretrain_teacher(
            bench.pretrain, profile.model, profile.pretrain, output / "cache", data_key, on_step
        )
        timings["teacher_pretraining_s"] = round(time.perf_counter() - t0, 1)
        console.print(("trained" if trained else "reused cached") + f" teacher: {teacher_path}")
        runner = Runner(
            profile, bench, teacher_path, output / "cache" / "runs", progress=(start, advance)
        )
        zero_shot = runner.evaluate(runner.backbone())
        console.print(
            f"zero-shot (pre-trained model): ID {zero_shot['id']:.1f}%, OOD avg "
            f"{np.mean(list(zero_shot['ood'].values())):.1f}%"
        )

        # 2. Choose beta on the ID validation split (seed 0, object mask, single fill).
        t0 = time.perf_counter()
        spec_by_key = {s.key: s for s in specs}
        sweep_spec = spec_by_key["ours-object-single"]
        sweep: list[dict[str, Any]] = []
        sweep_states: dict[float, Any] = {}
        meters: dict[float, MaskQualityMeter] = {}
        for beta in ft.betas:
            meter = MaskQualityMeter(bench.train, profile.mask_thresholds, profile.mask_every)
            res, state = runner.fine_tune(sweep_spec, seed=0, beta=beta, callbacks=[meter])
            meters[beta] = meter
            sweep.append({"beta": beta, **res})
            sweep_states[beta] = (res, state)
            done(f"{sweep_spec.label} seed 0 beta={beta:g}", res)
        best = max(sweep, key=lambda r: (r["val"], -r["beta"]))
        beta_star = float(best["beta"])
        timings["beta_sweep_s"] = round(time.perf_counter() - t0, 1)
        console.print(
            f"β chosen on the ID validation split (seed 0): β = {beta_star:g} "
            f"(val {best['val']:.1f}%)"
        )

        # 3. Every method on every seed.
        t0 = time.perf_counter()
        per_seed: dict[str, list[dict[str, Any]]] = {s.key: [] for s in specs}
        per_seed["wise-ft"] = []
        per_seed["wise-ours"] = []
        wise_ft_curves: list[list[dict[str, Any]]] = []
        wise_ours_curves: list[list[dict[str, Any]]] = []
        for seed in range(profile.seeds):
            vanilla_state = None
            ours_state = None
            for spec in specs:
                if spec.key == "ours-object-single" and seed == 0:
                    res, state = sweep_states[beta_star]
                else:
                    res, state = runner.fine_tune(spec, seed=seed, beta=beta_star)
                    done(f"{spec.label} seed {seed}", res)
                per_seed[spec.key].append(res)
                if spec.key == "vanilla":
                    vanilla_state = state
                    curve = runner.wise_curve(state, ft.wise_alphas, {0.0: zero_shot, 1.0: res})
                    wise_ft_curves.append(curve)
                    half = [c for c in curve if c["alpha"] == 0.5]
                    per_seed["wise-ft"].append(
                        half[0] if half else runner.wise_curve(state, [0.5])[0]
                    )
                    runner.save_state(runner.wise_state(state, 0.5), f"wise-ft-0.5-seed{seed}.pt")
                if spec.key == "ours-object-single":
                    ours_state = state
                    curve = runner.wise_curve(state, ft.wise_alphas, {0.0: zero_shot, 1.0: res})
                    wise_ours_curves.append(curve)
                    half = [c for c in curve if c["alpha"] == 0.5]
                    per_seed["wise-ours"].append(
                        half[0] if half else runner.wise_curve(state, [0.5])[0]
                    )
            del vanilla_state, ours_state
        timings["methods_s"] = round(time.perf_counter() - t0, 1)

    # 4. Aggregate and report.
    labels: dict[str, str] = {"zero-shot": "Zero-shot"}
    labels.update({s.key: s.label for s in specs})
    labels["ours-object-single"] += f" β={beta_star:g}"
    labels["wise-ft"] = f"WiSE-FT {report.ALPHA}=0.5"
    labels["wise-ours"] = f"WiSE-Ours {report.ALPHA}=0.5"
    order = [
        "zero-shot",
        "vanilla",
        "wise-ft",
        "fd",
        "kd",
        *[s.key for s in specs if s.group == "ours" and s.key != "wise-kd"],
        "wise-ours",
        "wise-kd",
    ]
    methods: dict[str, Any] = {"zero-shot": report.aggregate([zero_shot], ood)}
    for key in order[1:]:
        methods[key] = report.aggregate(per_seed[key], ood)
    sweep_points = {f"beta-{r['beta']:g}": report.aggregate([r], ood) for r in sweep}
    for r in sweep:
        labels[f"beta-{r['beta']:g}"] = f"Ours object/single β={r['beta']:g} (seed 0)"

    title = (
        f"Shifted Fashion-MNIST: top-1 accuracy (%), mean ± std over {profile.seeds} "
        f"seed(s); β={beta_star:g} chosen on ID val"
    )
    console.print(report.results_table(methods, labels, ood, title))
    sweep_table = report.results_table(
        sweep_points, labels, ood, "β sweep (object mask, single fill, seed 0)"
    )
    console.print(sweep_table)
    mask_rows = meters[beta_star].rows()
    console.print(report.mask_quality_table(mask_rows))

    curves = {
        "WiSE-FT": _mean_curve(wise_ft_curves, ood),
        "WiSE-Ours": _mean_curve(wise_ours_curves, ood),
    }
    left = [
        "zero-shot",
        "vanilla",
        "fd",
        *[s.key for s in specs if s.group == "ours" and s.key != "wise-kd"],
        *sweep_points,
    ]
    right = ["zero-shot", "vanilla", "wise-ft", "kd", "ours-object-single", "wise-ours", "wise-kd"]
    report.plot_tradeoff(
        output / "tradeoff.png", {**methods, **sweep_points}, labels, curves, left, right
    )
    report.plot_examples(output / "examples.png", bench, runner, profile)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)

    payload: dict[str, Any] = {
        "benchmark": {
            "name": "Shifted Fashion-MNIST",
            "config": dataclasses.asdict(profile.bench),
            "test_sets": TEST_SET_DOCS,
            "ood_sets": ood,
        },
        "profile": dataclasses.asdict(profile),
        "selection": "beta chosen by the highest ID validation accuracy of the object-mask, "
        "single-fill run with seed 0; OOD sets never used for selection",
        "chosen_beta": beta_star,
        "labels": labels,
        "methods": methods,
        "beta_sweep": [{"beta": r["beta"], **report.aggregate([r], ood)} for r in sweep],
        "wise_ft_curve": curves["WiSE-FT"],
        "wise_ours_curve": curves["WiSE-Ours"],
        "mask_quality": {
            "method": f"ours-object-single, beta={beta_star:g}, seed 0",
            "rows": mask_rows,
        },
        "timings": timings,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        },
    }
    report.write_json(output / "results.json", payload)
    report.write_csv(output / "results.csv", methods, labels, ood)
    console.print(
        f"wrote {output / 'results.json'}, {output / 'results.csv'}, "
        f"{output / 'tradeoff.png'}, {output / 'examples.png'} "
        f"in {timings['total_s']:.0f} s"
    )
    return payload


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cfmask demo [--quick] [--output DIR] [--data-dir DIR] [--seeds N]``.

    Args:
        argv: Arguments after ``demo``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The process exit status (0 on success, 2 when Fashion-MNIST is missing).
    """
    args = build_parser().parse_args(argv)
    profile = PROFILES["quick" if args.quick else "default"]
    if args.seeds is not None:
        if args.seeds < 1:
            build_parser().error("--seeds must be at least 1")
        profile = dataclasses.replace(profile, seeds=args.seeds)
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        run_demo(profile, args.output, args.data_dir, console, allow_install=not args.no_install)
    except DatasetNotFoundError as err:
        console.print(f"[bold red]error:[/bold red] {err}", markup=True, highlight=False)
        return 2
    return 0

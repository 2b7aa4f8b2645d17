"""Orchestration of ``cfmask demo``: data, pre-trained model, selection, every method, report.

The protocol, fixed before any masking run is looked at (see ``docs/demo.md``):

1. The pre-trained model is the shipped file (hash-checked), or trained afresh with
   ``--pretrain``.
2. Seed 0: vanilla fine-tuning and FD (no mask) at every beta of the grid; beta is
   fixed by :data:`cfmask.demo.stats.BETA_RULE` on ID validation accuracy.
3. Seed 0, at that beta: the CAM object threshold, the CAM context threshold and the
   random masking rate are each picked from their grid by ID validation accuracy.
4. Every seed: vanilla (and its WiSE-FT curve), FD, KD, the three maskers with the
   single-image fill and the exact-mask ceiling (``SegmentationMasker`` on the
   garments' true masks, coverage fixed at ``FineTuneConfig.exact_min_coverage``),
   and the CAM object mask at the chosen threshold from the frozen pre-trained model's
   cached map (``relevance_source="cached_teacher"``), all paired on the same seeds.
5. The regime checks R1-R4 read zero-shot, vanilla, WiSE-FT 0.5 and FD only; every
   masking variant is compared with FD at the same beta and seed (mean and 95 %
   t-interval of the paired differences).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from cfmask.demo import report
from cfmask.demo.data import (
    TEST_SET_DOCS,
    Benchmark,
    DatasetNotFoundError,
    build_benchmark,
    build_pretrain_pool,
    load_fashion_mnist,
)
from cfmask.demo.pretrained import (
    environment,
    pretrain_main,
    save_pretrained,
    verify_pretrained,
    zero_shot_figures,
)
from cfmask.demo.runner import (
    PROFILES,
    Job,
    JobResult,
    JobRunner,
    Method,
    Profile,
    cached_teacher_object_method,
    exact_object_method,
    fd_method,
    kd_method,
    standard_masking_methods,
    vanilla_method,
    weights_for_profile,
)
from cfmask.demo.stats import (
    BETA_RULE,
    Interval,
    choose_beta,
    choose_by_validation,
    mean_ci95,
    paired_deltas,
    regime_checks,
)
from cfmask.demo.study_run import main as study_main
from cfmask.demo.teacher import build_backbone, pinned_torch, pretrain_teacher

__all__ = ("build_parser", "headline", "main", "run_demo")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cfmask demo``."""
    parser = argparse.ArgumentParser(
        prog="cfmask demo",
        description="Shifted Fashion-MNIST: an offline, CPU-sized version of the paper's "
        "experiment (shipped pre-trained model, spurious-cue fine-tuning data, ID and five "
        "OOD test sets, pre-registered regime checks, every method on the same seeds). "
        "`cfmask demo pretrain --output FILE.safetensors` retrains the pre-trained model; "
        "`cfmask demo study` runs the claims study over several data seeds.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small profile (1 seed, no selection grids, no confidence intervals; < 3 min)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("cfmask-demo-output"),
        help="output folder (results.json, results.csv, figures)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the Fashion-MNIST IDX files (or torchvision's "
        "FashionMNIST/raw layout below it)",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="number of paired training seeds (default: 3)"
    )
    parser.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of the data: which garments, backgrounds and positions each split gets "
        "(default 0; the pre-trained model's pool does not depend on it)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default 2); every run is pinned to the same thread count, "
        "so this changes only the wall time",
    )
    parser.add_argument(
        "--pretrain",
        action="store_true",
        help="train the pre-trained model with the shipped recipe instead of loading the "
        "shipped file (about 40 min on one core)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="pre-trained weights (.safetensors with its .json recipe) instead of the shipped file",
    )
    parser.add_argument(
        "--beta-grid",
        action="store_true",
        help="also run FD and every masker at every beta of the grid on every seed (the "
        "secondary table; about 1.7 times the default run's time)",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never try to apt-get install dataset-fashion-mnist",
    )
    return parser


def _dataset_table(bench: Benchmark, pool_size: int) -> Table:
    table = Table(title="Shifted Fashion-MNIST", header_style="bold")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("what it is")
    table.add_row(
        "pre-training",
        str(pool_size),
        "the pre-trained model's data: background family independent of the class",
    )
    table.add_row(
        "fine-tuning",
        str(len(bench.train)),
        f"background = the class's cue family with p={bench.config.cue_strength}",
    )
    table.add_row("ID validation", str(len(bench.val)), "same as fine-tuning; every choice")
    for name, doc in TEST_SET_DOCS.items():
        table.add_row(f"test: {name}", str(len(bench.tests[name])), doc)
    table.caption = f"data seed {bench.config.seed}"
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
                "ood_avg": float(np.mean([report.ood_avg(p, ood) for p in points])),
            }
        )
    return out


def headline(delta: dict[str, Interval], label: str) -> str:
    """The one-sentence reading of a paired comparison with FD.

    Args:
        delta: ``{"id": Interval, "ood_avg": Interval}`` of ``variant - FD``.
        label: The variant's name.

    Returns:
        "resolved" when the OOD interval excludes zero, "not resolved" otherwise.

    Example:
        >>> from cfmask.demo.stats import Interval
        >>> text = headline({"id": Interval(-0.5, -1.0, 0.0, 3),
        ...                  "ood_avg": Interval(0.4, -0.2, 1.0, 3)}, "object")
        >>> text.endswith("not resolved (the 95% interval contains 0).")
        True
    """
    ood, idd = delta["ood_avg"], delta["id"]
    if ood.n < 2:
        return (
            f"{label} vs FD at the same beta: OOD avg {ood.mean:+.2f}, ID {idd.mean:+.2f} "
            "(one seed: no confidence interval, nothing resolved)."
        )
    if ood.excludes_zero:
        verdict = "resolved: " + ("more" if ood.mean > 0 else "less") + " OOD accuracy than FD"
    else:
        verdict = "not resolved (the 95% interval contains 0)"
    return (
        f"{label} vs FD at the same beta: OOD avg {ood.mean:+.2f} "
        f"[{ood.ci95_low:+.2f}, {ood.ci95_high:+.2f}], ID {idd.mean:+.2f} "
        f"[{idd.ci95_low:+.2f}, {idd.ci95_high:+.2f}] ({ood.n} paired seeds): {verdict}."
    )


def _pretrained_weights(
    profile: Profile,
    raw: Any,
    output: Path,
    weights: Path | None,
    pretrain: bool,
    console: Console,
) -> tuple[Path, dict[str, Any]]:
    """Return the pre-trained weights file and a description of where it came from."""
    if pretrain:
        t0 = time.perf_counter()
        console.print(
            f"pre-training the model ({profile.pretrain.epochs} epochs on "
            f"{profile.pretrain.pool.n_images} images, {profile.pretrain.threads} thread(s))"
        )
        pool = build_pretrain_pool(profile.pretrain.pool, raw)
        state = pretrain_teacher(pool, profile.model, profile.pretrain)
        path = output / "pretrained.safetensors"
        backbone = build_backbone(profile.model)
        backbone.model.load_state_dict(state)
        figures = zero_shot_figures(backbone, raw, profile.pretrain.pool)
        save_pretrained(
            state, path, profile.model, profile.pretrain, figures, time.perf_counter() - t0
        )
        rec = verify_pretrained(path)
        return path, {"source": "trained by --pretrain", "file": str(path), "sha256": rec.sha256}
    return weights_for_profile(profile, weights)


def _progress_line(console: Console, ood: Sequence[str]) -> Any:
    def done(job: Job, res: JobResult) -> None:
        r = res.result
        if r is None:
            console.print(f"  {job.tag}: WiSE-FT mixtures evaluated")
            return
        text = f"  {job.tag}: val {r['val']:.1f}"
        if "id" in r:
            text += f"  ID {r['id']:.1f}  OOD avg {report.ood_avg(r, ood):.1f}"
        if "mask_fraction" in r:
            text += f"  mask {100 * r['mask_fraction']:.0f}%"
        console.print(text + f"  ({r['seconds']:.0f} s)")

    return done


def run_demo(
    profile: Profile,
    output: Path,
    data_dir: Path | None = None,
    console: Console | None = None,
    *,
    allow_install: bool = True,
    weights: Path | None = None,
    pretrain: bool = False,
    beta_grid: bool = False,
) -> dict[str, Any]:
    """Run the whole demo and write its files.

    Args:
        profile: Sizes and recipes (see :data:`~cfmask.demo.runner.PROFILES`).
        output: Output folder.
        data_dir: Extra folder to search for Fashion-MNIST.
        console: Where to print (a new :class:`rich.console.Console` by default).
        allow_install: Whether a missing dataset may be installed with apt-get.
        weights: Pre-trained weights to use instead of the shipped file.
        pretrain: Train the pre-trained model with ``profile.pretrain`` instead.
        beta_grid: Also run FD and every masker at every beta on every seed.

    Returns:
        The content written to ``results.json``.
    """
    console = console or Console()
    t_start = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    raw = load_fashion_mnist(data_dir, allow_install=allow_install)
    bench = build_benchmark(profile.bench, raw, profile.pretrain.pool)
    ood = bench.ood_names
    ft = profile.finetune
    console.print(_dataset_table(bench, profile.pretrain.pool.n_images))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    weights_path, weights_info = _pretrained_weights(
        profile, raw, output, weights, pretrain, console
    )
    timings["pretrained_model_s"] = round(time.perf_counter() - t0, 1)
    console.print(f"pre-trained model: {weights_info['source']} {weights_path}")
    done = _progress_line(console, ood)
    seeds = list(range(profile.seeds))

    with JobRunner(profile, bench, weights_path) as runner:
        zero_shot = runner.evaluate_zero_shot()
        console.print(
            f"zero-shot (pre-trained model): val {zero_shot['val']:.1f}  ID "
            f"{zero_shot['id']:.1f}  OOD avg {report.ood_avg(zero_shot, ood):.1f}"
        )
        results: dict[tuple[str, int, float | None], dict[str, Any]] = {}
        wise_by_seed: dict[int, list[dict[str, Any]]] = {}

        def file_result(job: Job, res: JobResult, key: str, beta: float | None) -> None:
            if res.result is not None:
                results[(key, job.seed, beta)] = res.result
            if res.wise:
                wise_by_seed[job.seed] = res.wise

        # Selection, part 1: beta by the written rule (seed 0, ID validation only).
        # Selection runs are evaluated on ID validation alone; the chosen ones are
        # evaluated on the test sets afterwards, so no unchosen setting's OOD figure
        # is ever computed.
        t0 = time.perf_counter()
        alphas = tuple(sorted({a for a in ft.wise_alphas if 0.0 < a < 1.0} | {0.5}))
        jobs = [Job("vanilla seed 0", 0, vanilla_method(), wise_alphas=alphas)]
        jobs += [
            Job(f"FD beta={b:g} seed 0", 0, fd_method(b), keep_state=True, val_only=True)
            for b in ft.betas
        ]
        out = runner.run(jobs, done)
        file_result(jobs[0], out[jobs[0].tag], "vanilla", None)
        fd_runs = {b: out[job.tag] for b, job in zip(ft.betas, jobs[1:], strict=True)}
        fd_val = {b: r.result["val"] for b, r in fd_runs.items() if r.result is not None}
        beta, rule_met = choose_beta(
            results[("vanilla", 0, None)]["val"], fd_val, ft.beta_tolerance
        )
        console.print(
            f"β = {beta:g} by the written rule (vanilla val "
            f"{results[('vanilla', 0, None)]['val']:.1f}; FD val "
            + ", ".join(f"β={b:g}: {v:.1f}" for b, v in fd_val.items())
            + ("" if rule_met else "; no β met the tolerance, the smallest was taken")
            + ")"
        )

        # Selection, part 2: thresholds and rate at that beta (seed 0, ID validation).
        grids: dict[str, dict[float, Method]] = {
            "object": {
                t: standard_masking_methods(beta, t, 0.5, 0.5)[0] for t in ft.object_thresholds
            },
            "context": {
                t: standard_masking_methods(beta, 0.5, t, 0.5)[1] for t in ft.context_thresholds
            },
            "random": {p: standard_masking_methods(beta, 0.5, 0.5, p)[2] for p in ft.random_ratios},
        }
        if not profile.select:
            grids = {name: {v: g[v]} for name, g in grids.items() for v in [sorted(g)[len(g) // 2]]}
        jobs = [
            Job(
                f"{m.label} seed 0",
                0,
                m,
                keep_state=True,
                val_only=True,
                mask_quality=(name == "object"),
            )
            for name, g in grids.items()
            for m in g.values()
        ]
        out = runner.run(jobs, done)
        chosen: dict[str, float] = {}
        quality: dict[float, list[dict[str, float]]] = {}
        grid_results: dict[str, dict[float, Any]] = {}
        grid_runs: dict[str, dict[float, JobResult]] = {}
        for name, g in grids.items():
            vals = {}
            grid_results[name] = {}
            grid_runs[name] = {}
            for v, m in g.items():
                res = out[f"{m.label} seed 0"]
                assert res.result is not None
                vals[v] = res.result["val"]
                grid_results[name][v] = res.result
                grid_runs[name][v] = res
                if res.mask_quality is not None:
                    quality[v] = res.mask_quality
            chosen[name] = choose_by_validation(vals)
        console.print(
            "chosen on ID validation (seed 0): object t = "
            f"{chosen['object']:g}, context t = {chosen['context']:g}, random p = "
            f"{chosen['random']:g}"
        )
        masking = standard_masking_methods(
            beta, chosen["object"], chosen["context"], chosen["random"]
        )
        # The exact-mask ceiling: fixed coverage, nothing selected, so it runs on every
        # seed (seed 0 included) with the others.
        exact = exact_object_method(beta, ft.exact_min_coverage)
        # The CAM object mask from the frozen pre-trained model's cached map (not the
        # reference's student map): the chosen threshold, nothing selected, every seed.
        teacher = cached_teacher_object_method(beta, chosen["object"])
        # The chosen seed-0 runs (and, for --beta-grid, FD at every beta) on the tests.
        to_test: dict[str, tuple[str, float, JobResult]] = {}
        for b, r in fd_runs.items():
            if b == beta or beta_grid:
                to_test[f"FD beta={b:g} seed 0 (test)"] = ("fd", b, r)
        for name, m in zip(("object", "context", "random"), masking, strict=True):
            to_test[f"{m.label} seed 0 (test)"] = (m.key, beta, grid_runs[name][chosen[name]])
        jobs = [Job(tag, 0, state=r.state) for tag, (_, _, r) in to_test.items()]
        out = runner.run(jobs, done)
        for tag, (key, b, r) in to_test.items():
            full = out[tag].result
            assert full is not None and r.result is not None
            merged = {**full, **{k: v for k, v in r.result.items() if k != "val"}}
            results[(key, 0, b)] = merged
        timings["selection_s"] = round(time.perf_counter() - t0, 1)

        # Every seed, paired.
        t0 = time.perf_counter()
        kd = kd_method(ft.kd_weight, ft.kd_temperature)
        jobs = [
            Job(f"{kd.label} seed 0", 0, kd),
            Job(f"{exact.label} seed 0", 0, exact),
            Job(f"{teacher.label} seed 0", 0, teacher),
        ]
        keys: dict[str, tuple[str, float | None]] = {
            jobs[0].tag: ("kd", None),
            jobs[1].tag: (exact.key, beta),
            jobs[2].tag: (teacher.key, beta),
        }
        for seed in seeds[1:]:
            for m, mb in (
                (vanilla_method(), None),
                (fd_method(beta), beta),
                (kd, None),
                *((mm, beta) for mm in [*masking, exact, teacher]),
            ):
                job = Job(
                    f"{m.label} seed {seed}",
                    seed,
                    m,
                    wise_alphas=alphas if m.key == "vanilla" else (),
                )
                keys[job.tag] = (m.key, mb)
                jobs.append(job)
        if beta_grid:
            for b in ft.betas:
                if b == beta:
                    continue
                for m in [
                    fd_method(b),
                    *standard_masking_methods(
                        b, chosen["object"], chosen["context"], chosen["random"]
                    ),
                    exact_object_method(b, ft.exact_min_coverage),
                    cached_teacher_object_method(b, chosen["object"]),
                ]:
                    for seed in seeds:
                        if m.key == "fd" and seed == 0:
                            continue
                        job = Job(f"{m.label} β={b:g} seed {seed}", seed, m)
                        keys[job.tag] = (m.key, b)
                        jobs.append(job)
        out = runner.run(jobs, done)
        for job in jobs:
            key, kb = keys[job.tag]
            file_result(job, out[job.tag], key, kb)
        timings["seeds_s"] = round(time.perf_counter() - t0, 1)

    # Aggregate.
    def per_seed(key: str, b: float | None) -> list[dict[str, Any]]:
        return [results[(key, s, b)] for s in seeds]

    wise_curves = [wise_by_seed[s] for s in seeds]
    wise_half = [next(p for p in c if p["alpha"] == 0.5) for c in wise_curves]
    labels: dict[str, str] = {
        "zero-shot": "Zero-shot",
        "vanilla": "Vanilla FT",
        "wise-ft": f"WiSE-FT {report.ALPHA}=0.5",
        "fd": f"FD (no mask) β={beta:g}",
        "kd": "KD",
    }
    masking = [*masking, exact, teacher]
    labels.update({m.key: m.label for m in masking})
    methods: dict[str, Any] = {
        "zero-shot": report.aggregate([zero_shot], ood),
        "vanilla": report.aggregate(per_seed("vanilla", None), ood),
        "wise-ft": report.aggregate(wise_half, ood),
        "fd": report.aggregate(per_seed("fd", beta), ood),
        "kd": report.aggregate(per_seed("kd", None), ood),
    }
    for m in masking:
        methods[m.key] = report.aggregate(per_seed(m.key, beta), ood)

    def mean_pair(key: str) -> tuple[float, float]:
        return (methods[key]["id"]["mean"], methods[key]["ood_avg"]["mean"])

    checks = regime_checks(
        mean_pair("zero-shot"), mean_pair("vanilla"), mean_pair("wise-ft"), mean_pair("fd")
    )

    def paired(var: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Interval]:
        return {
            "id": mean_ci95(paired_deltas([r["id"] for r in var], [r["id"] for r in base])),
            "ood_avg": mean_ci95(
                paired_deltas(
                    [report.ood_avg(r, ood) for r in var],
                    [report.ood_avg(r, ood) for r in base],
                )
            ),
        }

    def deltas_at(b: float) -> dict[str, dict[str, Interval]]:
        return {m.key: paired(per_seed(m.key, b), per_seed("fd", b)) for m in masking}

    deltas = deltas_at(beta)
    # Where the exact mask stands: minus the CAM object mask (how much of its effect the
    # CAM recovers) and minus random masks (whether masking the object matters).
    exact_minus = {
        key: paired(per_seed(exact.key, beta), per_seed(key, beta))
        for key in ("object-single", "random-single")
    }
    # What the cached teacher map costs against the reference's student map (same masker,
    # threshold, fill and beta), paired by seed.
    teacher_minus = paired(per_seed(teacher.key, beta), per_seed("object-single", beta))
    grid_deltas = {b: deltas_at(b) for b in ft.betas if beta_grid}
    sentence = headline(deltas["object-single"], "CAM object masking (single fill)")
    ceiling = headline(deltas[exact.key], "Exact-mask object masking (single fill)")

    # Report.
    console.print(report.regime_table(checks))
    n_seeds = profile.seeds
    title = (
        f"Shifted Fashion-MNIST: top-1 accuracy (%), mean ± std over {n_seeds} paired "
        f"seed(s); β={beta:g} by the written rule"
    )
    if n_seeds == 1:
        title += " (one seed: no spread, no confidence intervals)"
    console.print(report.results_table(methods, labels, ood, title))
    console.print(
        report.delta_table(
            deltas, labels, f"Paired difference to FD at β={beta:g}: mean [95% t-interval]"
        )
    )
    for b, d in grid_deltas.items():
        if b == beta:
            continue
        console.print(report.delta_table(d, labels, f"Paired difference to FD at β={b:g}"))
    mask_rows = quality.get(chosen["object"], [])
    if mask_rows:
        console.print(report.mask_quality_table(mask_rows))
    console.print(f"[bold]{sentence}[/bold]")
    console.print(f"Ceiling: {ceiling}")
    for key, gap in exact_minus.items():
        console.print(
            f"Exact mask minus {labels[key]}: OOD avg "
            f"{report.format_interval(gap['ood_avg'].as_dict())}, ID "
            f"{report.format_interval(gap['id'].as_dict())}"
        )

    console.print(
        f"Cached teacher map minus student map ({labels['object-single']}): OOD avg "
        f"{report.format_interval(teacher_minus['ood_avg'].as_dict())}, ID "
        f"{report.format_interval(teacher_minus['id'].as_dict())}"
    )

    curve = _mean_curve(
        wise_curves_with_ends(wise_curves, zero_shot, per_seed("vanilla", None)), ood
    )
    left = ["zero-shot", "vanilla", "fd", *[m.key for m in masking]]
    right = ["zero-shot", "vanilla", "wise-ft", "fd", "kd", "object-single"]
    report.plot_tradeoff(output / "tradeoff.png", methods, labels, {"WiSE-FT": curve}, left, right)
    with pinned_torch(ft.threads):
        report.plot_examples(
            output / "examples.png",
            bench,
            runner.context.backbone(),
            chosen["object"],
            chosen["context"],
        )
    timings["total_s"] = round(time.perf_counter() - t_start, 1)

    payload: dict[str, Any] = {
        "benchmark": {
            "name": "Shifted Fashion-MNIST",
            "config": dataclasses.asdict(profile.bench),
            "test_sets": TEST_SET_DOCS,
            "ood_sets": ood,
        },
        "profile": dataclasses.asdict(profile),
        "pretrained_model": weights_info,
        "selection": {
            "beta_rule": BETA_RULE.format(tolerance=ft.beta_tolerance),
            "beta": beta,
            "beta_rule_met": rule_met,
            "fd_val_by_beta": {f"{b:g}": v for b, v in fd_val.items()},
            "vanilla_val": results[("vanilla", 0, None)]["val"],
            "threshold_rule": "highest ID validation accuracy of the seed-0 run at the "
            "chosen beta (ties: the smaller value)",
            "chosen": chosen,
            "grids": {
                name: {f"{v:g}": r for v, r in g.items()} for name, g in grid_results.items()
            },
            "grids_searched": profile.select,
        },
        "regime": {c.name: c.as_dict() for c in checks},
        "regime_pass": all(c.passed for c in checks),
        "labels": labels,
        "methods": methods,
        "delta_vs_fd": {key: {k: iv.as_dict() for k, iv in d.items()} for key, d in deltas.items()},
        "delta_vs_fd_by_beta": {
            f"{b:g}": {key: {k: iv.as_dict() for k, iv in d.items()} for key, d in dd.items()}
            for b, dd in grid_deltas.items()
        },
        "headline": sentence,
        "headline_exact_mask": ceiling,
        "exact_mask_minus": {
            key: {k: iv.as_dict() for k, iv in gap.items()} for key, gap in exact_minus.items()
        },
        "cached_teacher_minus_student": {k: iv.as_dict() for k, iv in teacher_minus.items()},
        "method_components": {
            "vanilla": vanilla_method().config(),
            "fd": fd_method(beta).config(),
            "kd": kd.config(),
            **{m.key: m.config() for m in masking},
        },
        "wise_ft_curve": curve,
        "mask_quality": {
            "method": f"object-single, t={chosen['object']:g}, beta={beta:g}, seed 0",
            "rows": mask_rows,
        },
        "timings": timings,
        "environment": environment(ft.threads),
    }
    report.write_json(output / "results.json", payload)
    report.write_csv(output / "results.csv", methods, labels, ood)
    (output / "results.md").write_text(report.markdown_report(payload))
    console.print(
        f"wrote {output / 'results.json'}, {output / 'results.csv'}, {output / 'results.md'}, "
        f"{output / 'tradeoff.png'}, {output / 'examples.png'} in {timings['total_s']:.0f} s"
    )
    return payload


def wise_curves_with_ends(
    curves: Sequence[Sequence[dict[str, Any]]],
    zero_shot: dict[str, Any],
    vanilla: Sequence[dict[str, Any]],
) -> list[list[dict[str, Any]]]:
    """Add the alpha = 0 (zero-shot) and alpha = 1 (vanilla) ends to each seed's curve.

    Args:
        curves: Per seed, the evaluated interior mixtures (each with ``alpha``).
        zero_shot: The pre-trained model's result.
        vanilla: Per seed, the vanilla result (same seed order as ``curves``).

    Returns:
        Per seed, the full curve sorted by alpha.
    """
    out = []
    for curve, van in zip(curves, vanilla, strict=True):
        full = [{**zero_shot, "alpha": 0.0}, *curve, {**van, "alpha": 1.0}]
        out.append(sorted(full, key=lambda p: float(p["alpha"])))
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cfmask demo [options]``, ``cfmask demo pretrain`` and ``cfmask demo study``.

    Args:
        argv: Arguments after ``demo``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The process exit status (0 on success, 2 when Fashion-MNIST is missing).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    if argv[:1] == ["study"]:
        return study_main(argv[1:])
    if argv[:1] == ["pretrain"]:
        try:
            return pretrain_main(argv[1:])
        except DatasetNotFoundError as err:
            console.print(f"[bold red]error:[/bold red] {err}", markup=True, highlight=False)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "default"]
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be at least 1")
        profile = dataclasses.replace(profile, seeds=args.seeds)
    if args.workers is not None:
        if args.workers < 1:
            parser.error("--workers must be at least 1")
        profile = dataclasses.replace(profile, workers=args.workers)
    if args.data_seed is not None:
        profile = dataclasses.replace(
            profile, bench=dataclasses.replace(profile.bench, seed=args.data_seed)
        )
    if args.pretrain and args.weights is not None:
        parser.error("--pretrain and --weights exclude each other")
    try:
        run_demo(
            profile,
            args.output,
            args.data_dir,
            console,
            allow_install=not args.no_install,
            weights=args.weights,
            pretrain=args.pretrain,
            beta_grid=args.beta_grid,
        )
    except DatasetNotFoundError as err:
        console.print(f"[bold red]error:[/bold red] {err}", markup=True, highlight=False)
        return 2
    return 0

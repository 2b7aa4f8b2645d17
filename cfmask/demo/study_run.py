"""``cfmask demo study``: the claims study, run over data seeds and training seeds.

One *cell* is one draw of the benchmark (data seed ``d``) and one training seed
``s``. A cell fine-tunes every method of the study on that draw with that seed and
evaluates it (the methods and their order are in :func:`run_cell`). Cells are
independent: they run in worker processes, each pinned to the profile's thread count
with deterministic kernels, so a cell's numbers depend neither on the machine's core
count nor on which worker ran it.

Every finished cell is written to ``<output>/cells/d<d>-s<s>.json`` at once (write to
a temporary file, then rename), next to ``<output>/study-config.json``, which records
everything that sets a cell's numbers (study choices, profile, weights hash; not the
seed counts). A second run with the same output folder reads the finished cells and
runs only the missing ones, so a study killed half-way continues where it stopped (a
cell that was running when it was killed starts again), and a study extended with
more data or training seeds runs only the new cells. A folder written with other
choices is refused.
The choices that the study does not re-select (beta, the CAM thresholds, the random
rate, the KD settings) are fixed in :class:`StudyConfig`; the analysis is
:mod:`cfmask.demo.study` and :mod:`cfmask.demo.study_report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import queue
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cfmask.backbones.state_dicts import average_state_dicts, interpolate_state_dicts
from cfmask.demo import study_report
from cfmask.demo.data import DatasetNotFoundError, RawData, build_benchmark, load_fashion_mnist
from cfmask.demo.pretrained import environment
from cfmask.demo.runner import (
    PROFILES,
    Job,
    JobResult,
    Method,
    Profile,
    RunContext,
    SeedResult,
    exact_object_method,
    fd_method,
    kd_method,
    linear_probe_method,
    lp_ft_method,
    soup_member_method,
    standard_masking_methods,
    vanilla_method,
    weights_for_profile,
    wise_kd_method,
)
from cfmask.demo.study import StudyConfig
from cfmask.demo.teacher import pinned_torch

__all__ = (
    "Cell",
    "StudyConfigMismatchError",
    "build_parser",
    "cell_units",
    "main",
    "run_cell",
    "run_study",
)


@dataclass(frozen=True)
class Cell:
    """One data seed and one training seed.

    Attributes:
        data_seed: The benchmark draw.
        train_seed: The training seed.
    """

    data_seed: int
    train_seed: int

    @property
    def name(self) -> str:
        """File stem of the cell's results, ``d<d>-s<s>``."""
        return f"d{self.data_seed}-s{self.train_seed}"


class StudyConfigMismatchError(ValueError):
    """The output folder holds cells of a study with another configuration."""


def _methods(cfg: StudyConfig) -> dict[str, Method]:
    """The fine-tuning methods of a cell, in run order (WiSE-KD comes last)."""
    masking = standard_masking_methods(
        cfg.beta, cfg.object_threshold, cfg.context_threshold, cfg.random_ratio
    )
    out: dict[str, Method] = {"vanilla": vanilla_method()}
    for scale in cfg.soup_lr_scales:
        if scale != 1.0:
            member = soup_member_method(scale)
            out[member.key] = member
    out["fd"] = fd_method(cfg.beta)
    out["kd"] = kd_method(cfg.kd_weight, cfg.kd_temperature)
    for m in masking:
        out[m.key] = m
    exact = exact_object_method(cfg.beta, cfg.exact_min_coverage)
    out[exact.key] = exact
    lp = linear_probe_method(cfg.lp_lr_scale)
    out[lp.key] = lp
    out["lp-ft"] = lp_ft_method()
    return out


#: Method keys whose WiSE curve (with the pre-trained model) each cell evaluates:
#: WiSE-FT's and WiSE-Ours' (Fig. 6).
WISE_KEYS = ("vanilla", "object-single")


def cell_units(cfg: StudyConfig) -> int:
    """Progress units of one cell: zero-shot, each training run, the soup, WiSE-KD."""
    return 1 + len(_methods(cfg)) + 1 + 1


def _save_state(state: Mapping[str, torch.Tensor], folder: Path, name: str) -> str:
    path = folder / name
    torch.save(dict(state), path)
    return str(path)


def run_cell(
    ctx: RunContext,
    cell: Cell,
    cfg: StudyConfig,
    advance: Callable[[str], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune and evaluate every method of the study on one cell.

    In order: the pre-trained model (zero-shot), vanilla fine-tuning (with its WiSE-FT
    curve), the soup's other ingredients (vanilla at the other learning rates, not
    evaluated), FD, KD, CAM object masks (with its WiSE curve, WiSE-Ours), CAM context
    and random masks, the exact masks, the linear probe (not evaluated) and LP-FT from
    it, the uniform soup (the ingredients' average, evaluated), and WiSE-KD (CAM object
    masking plus KD from this cell's WiSE-FT model at ``wise_kd_alpha``). Every run
    uses the cell's training seed.

    Args:
        ctx: A run context whose benchmark is the cell's data seed.
        cell: The cell.
        cfg: The study's choices.
        advance: Called with a method key as each unit finishes (progress).
        on_step: Called after every training step (a worker checks there that the
            study's main process is still alive).

    Returns:
        ``{"data_seed", "train_seed", "results": {key: SeedResult}, "wise": {key: [...]},
        "seconds"}``; ``wise`` lists the interior mixtures, each with its ``alpha``.
    """
    t0 = time.perf_counter()
    seed = cell.train_seed

    def note(key: str) -> None:
        if advance is not None:
            advance(key)

    results: dict[str, SeedResult] = {}
    wise: dict[str, list[SeedResult]] = {}
    with pinned_torch(ctx.profile.finetune.threads):
        results["zero-shot"] = ctx.evaluate(ctx.backbone())
    note("zero-shot")
    states: dict[str, dict[str, torch.Tensor]] = {}
    keep = {"vanilla", "linear-probe"} | {soup_member_method(s).key for s in cfg.soup_lr_scales}
    # Models that only feed another job are not evaluated: the probe (LP-FT starts
    # from it) and the soup's ingredients other than the vanilla row.
    not_scored = {"linear-probe"} | {
        soup_member_method(s).key for s in cfg.soup_lr_scales if s != 1.0
    }

    def train(method: Method, init: Mapping[str, torch.Tensor] | None = None) -> JobResult:
        job = Job(
            f"{method.key} {cell.name}",
            seed,
            method,
            keep_state=method.key in keep,
            wise_alphas=cfg.wise_alphas if method.key in WISE_KEYS else (),
            init_state=init,
            evaluate=method.key not in not_scored,
        )
        res = ctx.run(job, on_step)
        assert res.result is not None
        if job.evaluate:
            results[method.key] = res.result
        if res.wise:
            wise[method.key] = res.wise
        if res.state is not None:
            states[method.key] = res.state
        note(method.key)
        return res

    for key, method in _methods(cfg).items():
        train(method, init=states["linear-probe"] if key == "lp-ft" else None)
    members = [states[soup_member_method(s).key] for s in cfg.soup_lr_scales]
    soup = ctx.run(Job(f"soup {cell.name}", seed, state=average_state_dicts(members)))
    assert soup.result is not None
    results["soup"] = soup.result
    note("soup")
    with tempfile.TemporaryDirectory(prefix="cfmask-study-") as tmp:
        mixed = interpolate_state_dicts(ctx.zero_shot_state(), states["vanilla"], cfg.wise_kd_alpha)
        teacher = _save_state(mixed, Path(tmp), "wise-ft.pt")
        train(
            wise_kd_method(
                cfg.beta,
                cfg.object_threshold,
                teacher,
                cfg.wise_kd_weight,
                cfg.wise_kd_temperature,
            )
        )
    return {
        "data_seed": cell.data_seed,
        "train_seed": cell.train_seed,
        "results": results,
        "wise": wise,
        "seconds": round(time.perf_counter() - t0, 1),
    }


# --------------------------------------------------------------------- resume files
#: Settings that say which cells a study has or how fast it runs, not what a cell
#: computes: a folder's finished cells serve a study with more (or fewer) seeds.
_NOT_IN_A_CELL = frozenset({"workers", "data_seeds", "train_seeds", "seeds"})


def _fingerprint(cfg: StudyConfig, profile: Profile, weights_sha256: str) -> dict[str, Any]:
    """Everything that sets a cell's numbers (the seed counts and workers do not)."""
    design = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_A_CELL}
    prof = {k: v for k, v in dataclasses.asdict(profile).items() if k not in _NOT_IN_A_CELL}
    # Through JSON, so that it compares equal to the stored copy (tuples become lists).
    out: dict[str, Any] = json.loads(
        json.dumps({"study": design, "profile": prof, "weights_sha256": weights_sha256})
    )
    return out


def _write_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _check_or_write_config(output: Path, fingerprint: dict[str, Any]) -> None:
    path = output / "study-config.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StudyConfigMismatchError(
                f"{path} is not valid JSON ({err}); this folder's cells cannot be trusted. "
                "Use a new --output folder."
            ) from err
        if stored != fingerprint:
            changed = sorted(
                k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k)
            )
            raise StudyConfigMismatchError(
                f"{output} holds a study run with another configuration (differs in: "
                f"{', '.join(changed)}); its cells would be mixed with this run's. Use a "
                "new --output folder, or the options of the stored study-config.json."
            )
        return
    _write_atomic(path, fingerprint)


def _finished_cells(
    output: Path, cells: Sequence[Cell], console: Console
) -> dict[Cell, dict[str, Any]]:
    out: dict[Cell, dict[str, Any]] = {}
    for cell in cells:
        path = output / "cells" / f"{cell.name}.json"
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            console.print(f"{path} is unreadable; the cell runs again")
            continue
        if (record.get("data_seed"), record.get("train_seed")) != (
            cell.data_seed,
            cell.train_seed,
        ):
            console.print(f"{path} belongs to another cell; the cell runs again")
            continue
        out[cell] = record
    return out


# ---------------------------------------------------------------------- execution
class _CellWorker:
    """A worker's state: the raw data, and the run context of the last data seed."""

    def __init__(
        self, profile: Profile, weights: Path, data_dir: Path | None, allow_install: bool
    ) -> None:
        self.profile = profile
        self.weights = weights
        self.raw: RawData = load_fashion_mnist(data_dir, allow_install=allow_install)
        self._ctx: RunContext | None = None

    def context(self, data_seed: int) -> RunContext:
        if self._ctx is None or self._ctx.bench.config.seed != data_seed:
            self._ctx = None  # free the previous draw before building the next one
            bench_cfg = dataclasses.replace(self.profile.bench, seed=data_seed)
            bench = build_benchmark(bench_cfg, self.raw, self.profile.pretrain.pool)
            self._ctx = RunContext(self.profile, bench, self.weights)
        return self._ctx


_WORKER: _CellWorker | None = None
_EVENTS: Any = None
_PARENT_PID: int | None = None


def _init_worker(
    profile: Profile, weights: Path, data_dir: Path | None, allow_install: bool, events: Any
) -> None:
    global _WORKER, _EVENTS, _PARENT_PID
    import warnings

    warnings.filterwarnings("ignore")
    _PARENT_PID = os.getppid()
    _WORKER = _CellWorker(profile, weights, data_dir, allow_install)
    _EVENTS = events


def _exit_if_orphaned() -> None:
    """End this worker when the study's main process is gone (killed, for instance).

    Only the main process writes cells, so an orphaned worker's work is lost; without
    this check it would go on through the cells already queued to it and hold the CPU
    that the resumed study needs.
    """
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)


def _run_cell_in_worker(cell: Cell, cfg: StudyConfig) -> dict[str, Any]:
    if _WORKER is None:  # pragma: no cover - the initializer always ran
        raise RuntimeError("worker not initialised")
    _exit_if_orphaned()

    def advance(key: str) -> None:
        _exit_if_orphaned()
        if _EVENTS is not None:
            _EVENTS.put((cell.name, key))

    return run_cell(_WORKER.context(cell.data_seed), cell, cfg, advance, _exit_if_orphaned)


def _iter_cell_results(
    cells: Sequence[Cell],
    cfg: StudyConfig,
    profile: Profile,
    weights: Path,
    data_dir: Path | None,
    allow_install: bool,
    advance: Callable[[str, str], None],
) -> Iterator[tuple[Cell, dict[str, Any]]]:
    """Run the cells (in a worker pool when ``cfg.workers > 1``), yielding as each ends."""
    if cfg.workers == 1 or len(cells) == 1:
        worker = _CellWorker(profile, weights, data_dir, allow_install)
        for cell in cells:

            def note(key: str, name: str = cell.name) -> None:
                advance(name, key)

            yield cell, run_cell(worker.context(cell.data_seed), cell, cfg, note)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        events = manager.Queue()
        with ProcessPoolExecutor(
            max_workers=cfg.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(profile, weights, data_dir, allow_install, events),
        ) as pool:
            futures: dict[Future[dict[str, Any]], Cell] = {
                pool.submit(_run_cell_in_worker, cell, cfg): cell for cell in cells
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        name, key = events.get_nowait()
                    except queue.Empty:
                        break
                    advance(name, key)
                for fut in done:
                    yield futures[fut], fut.result()


def run_study(
    cfg: StudyConfig,
    output: Path,
    data_dir: Path | None = None,
    console: Console | None = None,
    *,
    allow_install: bool = True,
    weights: Path | None = None,
    profile: Profile | None = None,
) -> dict[str, Any]:
    """Run (or resume) the claims study and write its report.

    Args:
        cfg: The design and its fixed choices.
        output: Output folder (``study-config.json``, ``cells/``, ``study.json``,
            ``study.md``, ``study-tradeoff.png``, ``study-forest.png``).
        data_dir: Extra folder to search for Fashion-MNIST.
        console: Where to print.
        allow_install: Whether a missing dataset may be installed with apt-get.
        weights: Pre-trained weights instead of the shipped file.
        profile: Benchmark sizes and recipe instead of ``PROFILES[cfg.profile]`` (its
            ``seeds`` and ``workers`` are taken from ``cfg``).

    Returns:
        The content written to ``study.json``.

    Raises:
        StudyConfigMismatchError: If ``output`` holds cells of another configuration.
    """
    console = console or Console()
    t_start = time.perf_counter()
    profile = dataclasses.replace(
        profile if profile is not None else PROFILES[cfg.profile],
        seeds=cfg.train_seeds,
        workers=cfg.workers,
    )
    # Fail on missing data here, before any worker starts.
    load_fashion_mnist(data_dir, allow_install=allow_install)
    weights_path, weights_info = weights_for_profile(profile, weights)
    output.mkdir(parents=True, exist_ok=True)
    (output / "cells").mkdir(exist_ok=True)
    _check_or_write_config(output, _fingerprint(cfg, profile, str(weights_info["sha256"])))
    cells = [Cell(d, s) for d in cfg.data_seeds for s in range(cfg.train_seeds)]
    finished = _finished_cells(output, cells, console)
    todo = [c for c in cells if c not in finished]
    units = cell_units(cfg)
    console.print(
        f"claims study: {len(cfg.data_seeds)} data seeds x {cfg.train_seeds} training seeds "
        f"= {len(cells)} cells ({len(finished)} already done in {output / 'cells'}), "
        f"{units} units each, {cfg.workers} worker(s)"
    )
    t_run = time.perf_counter()
    if todo:
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("study (runs)", total=len(todo) * units)

            def advance(cell_name: str, key: str) -> None:
                bar.update(task, advance=1, description=f"study ({cell_name}: {key})")

            for cell, record in _iter_cell_results(
                todo, cfg, profile, weights_path, data_dir, allow_install, advance
            ):
                _write_atomic(output / "cells" / f"{cell.name}.json", record)
                finished[cell] = record
                console.print(f"  cell {cell.name} done in {record['seconds']:.0f} s")
    run_seconds = round(time.perf_counter() - t_run, 1)
    records = [finished[c] for c in cells]
    ood = study_report.ood_names(records)
    analysis = study_report.analyse(records, cfg, ood)
    payload: dict[str, Any] = {
        "design": dataclasses.asdict(cfg),
        "profile": dataclasses.asdict(profile),
        "pretrained_model": weights_info,
        "ood_sets": ood,
        **analysis,
        "timings": {
            "cells_run_now": len(todo),
            "cells_resumed": len(cells) - len(todo),
            "run_s": run_seconds,
            "total_s": round(time.perf_counter() - t_start, 1),
            "cell_s": {c.name: finished[c]["seconds"] for c in cells},
        },
        "environment": environment(profile.finetune.threads),
    }
    study_report.print_report(console, payload)
    study_report.write_outputs(output, payload)
    console.print(
        f"wrote {output / 'study.json'}, {output / 'study.md'}, "
        f"{output / 'study-tradeoff.png'}, {output / 'study-forest.png'} "
        f"in {payload['timings']['total_s']:.0f} s"
    )
    return payload


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cfmask demo study``."""
    parser = argparse.ArgumentParser(
        prog="cfmask demo study",
        description="The claims study: every method of the demo and the paper's Table 3 "
        "and Fig. 6 baselines on several data seeds x several training seeds, with the "
        "pre-registered comparisons read across data seeds. Resumable: run the same "
        "command again to continue a study that stopped.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("cfmask-study-output"),
        help="output folder; finished cells in it are kept and reused",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST folder")
    parser.add_argument(
        "--data-seeds",
        type=int,
        nargs="+",
        default=None,
        help="benchmark draws (default 1 2 3 4 5 6: the pre-registered plan)",
    )
    parser.add_argument(
        "--train-seeds",
        type=int,
        default=None,
        help="training seeds per draw (default 2: the pre-registered plan)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default 2); changes only the wall time",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="pre-trained weights (.safetensors with its .json recipe)",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never try to apt-get install the data"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cfmask demo study``.

    Args:
        argv: Arguments after ``demo study``.

    Returns:
        0 on success, 2 on missing data or a folder of another study.
    """
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = Console(width=None if sys.stdout.isatty() else 150)
    cfg = StudyConfig()
    changes: dict[str, Any] = {}
    if args.data_seeds is not None:
        changes["data_seeds"] = tuple(args.data_seeds)
    if args.train_seeds is not None:
        changes["train_seeds"] = args.train_seeds
    if args.workers is not None:
        changes["workers"] = args.workers
    try:
        cfg = dataclasses.replace(cfg, **changes)
        run_study(
            cfg,
            args.output,
            args.data_dir,
            console,
            allow_install=not args.no_install,
            weights=args.weights,
        )
    except (DatasetNotFoundError, ValueError) as err:
        console.print(f"[bold red]error:[/bold red] {err}", markup=True, highlight=False)
        return 2
    return 0

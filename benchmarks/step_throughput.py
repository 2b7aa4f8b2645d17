"""Training-step throughput of every fine-tuning method, measured side by side.

For each model and method, builds a :class:`~cfmask.training.objective.CounterfactualObjective`
(the loss the fine-tuner trains with) and times optimisation steps on one fixed random
batch already on the device: the objective's forward (relevance pass, masking,
refilling, teacher and student passes), ``backward`` of its total loss, global-norm
clipping at 1.0 and an AdamW step on the student. That is the work of one training
step of :class:`~cfmask.CounterfactualFineTuner` without Lightning's loop, the data
loader or the logging. Warm-up
steps are excluded; the reported step time is the median over ``--repeats`` timed runs
of ``--steps`` steps each. ``ratio_to_vanilla`` divides each method's step time by
vanilla fine-tuning's from the same run (same model, batch and precision).

Peak memory (``peak_mem_mb``) is measured while a method's objective is built and runs
its warm-up steps, above what was allocated just before (so it counts the student,
teacher, optimiser state, gradients and activations of that method only). On CUDA it is
``torch.cuda.max_memory_allocated`` minus ``torch.cuda.memory_allocated`` before the
build. On the CPU it is the process's peak resident set size (``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident size before the build: approximate, since
the allocator keeps freed memory, and ``null`` where ``/proc`` does not allow the reset.

Timing is interleaved: all methods of a model are built and warmed up, then each timed
repeat visits every method in turn, so a slow-down of a shared machine hits all methods
alike. ``--sequential`` instead measures and frees one method at a time, for models
whose objectives do not fit in memory together (ViT-L/14 at large batches).

Methods: ``vanilla`` (cross-entropy only), ``fd`` (feature distillation on the clean
image, no mask), ``obj_single`` / ``obj_multi`` (object mask from the attention-gradient
relevance of the student, single- or multi-image refill: the paper's method),
``obj_single_last1`` (``obj_single`` with the relevance rolled out over the last block
only, ``AttentionGradRelevance(last_blocks=1)``: a cheaper map, not the reference's),
``obj_single_cached`` (``obj_single`` with the frozen teacher's map read from a
cache, ``relevance_source="cached_teacher"``: the map is computed once before timing,
stored as fp16 and looked up every step, so the step has no relevance pass; 7F),
``rand_single`` (random mask, single-image refill), ``rand_drop`` (random mask, no fill,
masked tokens dropped) and ``reference`` (``obj_single`` computed as the reference code
does: no shared relevance pass, separate student passes, explicit attention everywhere).

``--runs N`` runs the whole comparison ``N`` times, each in a fresh process (so the
allocator, caches and peak memory start afresh), and prints the median and the lowest
and highest value of every quantity over the runs.

Examples::

    python benchmarks/step_throughput.py --json            # CPU, tiny model, < 1 min
    python benchmarks/step_throughput.py --models vit_b32 --batch-size 8 \\
        --warmup 1 --steps 1 --repeats 1 --runs 3         # real size on the CPU
    python benchmarks/step_throughput.py --device cuda --precision bf16-mixed \\
        --models vit_b16,vit_b32,vit_l14 --batch-size 256 --steps 10 --sequential --json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from cfmask import CounterfactualObjective
from cfmask.backbones import OpenCLIPViT, TimmViT, VisionBackbone
from cfmask.masking import (
    MultiImageRefiller,
    ObjectMasker,
    RandomMasker,
    SingleImageRefiller,
    TokenDropRefiller,
)
from cfmask.relevance import AttentionGradRelevance
from cfmask.testing import tiny_clip_config, tiny_timm_args

__all__ = ("METHODS", "MODELS", "Result", "main", "run_benchmark")

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")

# Each method: the objective's keyword arguments (besides the backbone), and whether
# every attention should run explicitly (the reference design).
METHODS: dict[str, tuple[Callable[[], dict[str, Any]], bool]] = {
    "vanilla": (lambda: {"distillation": []}, False),
    "fd": (lambda: {}, False),
    "obj_single": (
        lambda: {"masker": ObjectMasker(0.3), "refiller": SingleImageRefiller()},
        False,
    ),
    "obj_single_last1": (
        lambda: {
            "masker": ObjectMasker(0.3),
            "refiller": SingleImageRefiller(),
            "relevance": AttentionGradRelevance(last_blocks=1),
        },
        False,
    ),
    "obj_single_cached": (
        lambda: {
            "masker": ObjectMasker(0.3),
            "refiller": SingleImageRefiller(),
            "relevance_source": "teacher",
        },
        False,
    ),
    "obj_multi": (lambda: {"masker": ObjectMasker(0.6), "refiller": MultiImageRefiller()}, False),
    "rand_single": (
        lambda: {"masker": RandomMasker(0.5), "refiller": SingleImageRefiller()},
        False,
    ),
    "rand_drop": (
        lambda: {"masker": RandomMasker(0.75, exact_count=True), "refiller": TokenDropRefiller()},
        False,
    ),
    "reference": (
        lambda: {
            "masker": ObjectMasker(0.3),
            "refiller": SingleImageRefiller(),
            "share_relevance_pass": False,
            "fuse_student_passes": False,
        },
        True,
    ),
}

# Methods whose step reads the teacher's relevance map from a cache instead of computing it.
_CACHED_RELEVANCE = {"obj_single_cached"}


class _WithCachedRelevance:
    """The objective fed the teacher's map of the batch, stored once as fp16.

    Stands in for ``relevance_source="cached_teacher"`` of the fine-tuner: the map is
    computed when the method is prepared (as the cache is built before training) and
    every step gathers its rows by sample index and converts them back to float32.
    """

    def __init__(self, objective: CounterfactualObjective, images: Tensor, targets: Tensor):
        self.student = objective.student
        self._objective = objective
        self._rows = objective.relevance_scores(images, targets).detach().half()
        self._index = torch.arange(images.shape[0], device=images.device)

    def __call__(self, images: Tensor, targets: Tensor) -> Any:
        return self._objective(images, targets, scores=self._rows[self._index].float())


# Tiny models from cfmask.testing, larger than the unit tests' (more blocks, 4-px patches).
_TINY_TIMM = tiny_timm_args(100, patch_size=4, depth=4, embed_dim=96, num_heads=3)
_TINY_CLIP_CFG = tiny_clip_config(
    64,
    vision={"patch_size": 4, "width": 96, "layers": 4},
    text={"context_length": 16, "heads": 1},
    init_logit_scale=None,
)
# The unit tests' tiny models (2 blocks, 32 px, 10 classes): smoke runs and dry-runs.
_UNIT_TIMM = tiny_timm_args(10)
_UNIT_CLIP_CFG = tiny_clip_config()
# open_clip architectures benchmarked without weights (throughput does not depend on them).
_OPENCLIP = {"vit_b32": "ViT-B-32", "vit_b16": "ViT-B-16", "vit_l14": "ViT-L-14"}
# timm architectures benchmarked without weights: 224-px images, a 1000-class linear head.
_TIMM = {"timm_vit_b16": "vit_base_patch16_224", "timm_vit_b32": "vit_base_patch32_224"}
MODELS = ("tiny", "tiny_clip", "unit", "unit_clip", *_OPENCLIP, *_TIMM)


@dataclass(frozen=True)
class Result:
    """One row of the benchmark.

    Attributes:
        method: Method name (a key of :data:`METHODS`).
        model: Model name (one of :data:`MODELS`).
        batch_size: Images per step.
        precision: Lightning-style precision name.
        images_per_s: ``batch_size`` divided by the median step time.
        ratio_to_vanilla: Step time divided by vanilla's in the same run (``None``
            when vanilla was not measured).
        peak_mem_mb: Peak memory in MiB (see the module docstring), or ``None``.
    """

    method: str
    model: str
    batch_size: int
    precision: str
    images_per_s: float
    ratio_to_vanilla: float | None
    peak_mem_mb: float | None


def build_backbone(
    model: str, *, grad_checkpointing: bool = False, text_cache_dir: str | None = None
) -> VisionBackbone:
    """Build a benchmark backbone with random weights.

    Args:
        model: ``"tiny"`` (a 4-block timm ViT on 64-px images), ``"tiny_clip"`` (the
            same size as an open_clip tower), ``"unit"``/``"unit_clip"`` (the unit tests'
            2-block timm and open_clip models on 32-px images, 10 classes), or
            ``"vit_b32"``/``"vit_b16"``/``"vit_l14"``
            (open_clip architectures with a 1000-class zero-shot head built from one
            template and generic class names, so the text tower runs on 1000 prompts),
            or ``"timm_vit_b16"``/``"timm_vit_b32"`` (timm's ``vit_base_patch16_224`` /
            ``vit_base_patch32_224`` with a 1000-class linear head).
        grad_checkpointing: Build the backbone with gradient checkpointing.
        text_cache_dir: Where the zero-shot head's text embeddings are cached.

    Returns:
        The backbone, on the CPU.
    """
    if model == "tiny":
        return TimmViT(**_TINY_TIMM, grad_checkpointing=grad_checkpointing)
    if model == "unit":
        return TimmViT(**_UNIT_TIMM, grad_checkpointing=grad_checkpointing)
    if model == "unit_clip":
        return OpenCLIPViT(
            "unit",
            model_cfg=_UNIT_CLIP_CFG,
            class_names=[f"class {i}" for i in range(10)],
            templates=["a photo of a {}."],
            text_cache_dir=text_cache_dir,
            grad_checkpointing=grad_checkpointing,
        )
    if model in _TIMM:
        return TimmViT(_TIMM[model], num_classes=1000, grad_checkpointing=grad_checkpointing)
    names = [f"class {i}" for i in range(1000 if model in _OPENCLIP else 100)]
    if model == "tiny_clip":
        return OpenCLIPViT(
            "tiny",
            model_cfg=_TINY_CLIP_CFG,
            class_names=names,
            templates=["a photo of a {}."],
            text_cache_dir=text_cache_dir,
            grad_checkpointing=grad_checkpointing,
        )
    if model in _OPENCLIP:
        return OpenCLIPViT(
            _OPENCLIP[model],
            pretrained=None,
            class_names=names,
            templates=["a photo of a {}."],
            text_cache_dir=text_cache_dir,
            grad_checkpointing=grad_checkpointing,
        )
    raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")


def set_fused_attention(module: torch.nn.Module, enabled: bool) -> None:
    """Switch fused attention on or off in every backbone inside ``module``."""
    for m in module.modules():
        if isinstance(m, TimmViT | OpenCLIPViT):
            m.set_fused_attention(enabled)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ CPU memory
def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[list[float | None]]:
    """Yield a one-element list that receives the peak memory in MiB on exit."""
    out: list[float | None] = [None]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        out[0] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    base = _rss_kib("VmRSS")
    can_reset = _reset_peak_rss()
    yield out
    peak = _rss_kib("VmHWM")
    if can_reset and base is not None and peak is not None:
        out[0] = max(0, peak - base) / 1024


# ------------------------------------------------------------------- the step
def _step_fn(
    objective: CounterfactualObjective,
    images: Tensor,
    targets: Tensor,
    device: torch.device,
    precision: str,
) -> Callable[[], None]:
    """One optimisation step of ``objective``: loss, backward, clipping, AdamW."""
    params = [p for p in objective.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def step() -> None:
        with _autocast(device, precision):
            loss = objective(images, targets).loss
        if scaler is not None:
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@dataclass
class _Prepared:
    step: Callable[[], None]
    objective: CounterfactualObjective
    peak_mb: float | None
    times: list[float]


def prepare_method(
    method: str,
    backbone: Callable[[], VisionBackbone],
    images: Tensor,
    targets: Tensor,
    *,
    precision: str,
    warmup: int,
) -> _Prepared:
    """Build one method's objective and run its warm-up steps, measuring memory.

    Args:
        method: A key of :data:`METHODS`.
        backbone: Builds a fresh backbone (same weights for every method).
        images: ``(B, 3, S, S)`` batch on the target device.
        targets: ``(B,)`` labels on the target device.
        precision: One of :data:`PRECISIONS`.
        warmup: Untimed steps (at least one is run to measure memory).

    Returns:
        The step closure, the objective, and its peak memory (MiB above what was
        allocated before it was built).
    """
    device = images.device
    make_kwargs, explicit_attention = METHODS[method]
    _release_memory(device)
    before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    with _peak_memory(device) as peak:
        torch.manual_seed(0)
        objective = CounterfactualObjective(backbone(), **make_kwargs()).to(device)
        if explicit_attention:
            set_fused_attention(objective, False)
        objective.train()
        stepped: Any = objective
        if method in _CACHED_RELEVANCE:
            stepped = _WithCachedRelevance(objective, images, targets)
        step = _step_fn(stepped, images, targets, device, precision)
        for _ in range(max(1, warmup)):
            step()
        _sync(device)
    peak_mb = None if peak[0] is None else max(0.0, peak[0] - before)
    return _Prepared(step=step, objective=objective, peak_mb=peak_mb, times=[])


#: Clocks a step can be timed with: wall time, or the CPU time of this process (with one
#: torch thread on a shared machine, CPU time does not count the time other jobs hold
#: the core, so it is the steadier measure there; it cannot see GPU work).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_steps(prepared: _Prepared, device: torch.device, steps: int, clock: str = "wall") -> None:
    """Time ``steps`` consecutive steps and append the mean seconds per step."""
    now = CLOCKS[clock]
    _sync(device)
    start = now()
    for _ in range(steps):
        prepared.step()
    _sync(device)
    prepared.times.append((now() - start) / steps)


def run_benchmark(
    *,
    models: Sequence[str],
    methods: Sequence[str],
    device: torch.device,
    precision: str,
    batch_size: int,
    steps: int,
    warmup: int,
    repeats: int,
    grad_checkpointing: bool = False,
    sequential: bool = False,
    log: Callable[[str], None] | None = None,
    clock: str = "wall",
) -> list[Result]:
    """Measure every method on every model.

    By default all methods of a model are built first and the timed repeats visit
    them in turn (method 1, 2, ..., method 1, 2, ...), so a slow-down of a shared
    machine affects every method alike. ``sequential=True`` measures one method at a
    time and frees it before the next (for models whose objectives don't fit in
    memory together).

    Args:
        models: Names from :data:`MODELS`.
        methods: Names from :data:`METHODS` (include ``vanilla`` for the ratios).
        device: Where to run.
        precision: One of :data:`PRECISIONS`.
        batch_size: Images per step.
        steps: Timed steps per repeat.
        warmup: Untimed steps per method (at least one).
        repeats: Timed runs per method (median).
        grad_checkpointing: Build the backbones with gradient checkpointing.
        sequential: One method in memory at a time.
        log: Receives progress lines.
        clock: A key of :data:`CLOCKS`.

    Returns:
        One :class:`Result` per (model, method).
    """
    results: list[Result] = []
    groups = [[m] for m in methods] if sequential else [list(methods)]
    with tempfile.TemporaryDirectory(prefix="cfmask-bench-text-") as cache:
        for model_name in models:
            torch.manual_seed(0)
            proto = build_backbone(
                model_name, grad_checkpointing=grad_checkpointing, text_cache_dir=cache
            )
            state = {k: v.clone() for k, v in proto.state_dict().items()}
            size = proto.data_config.image_size
            num_classes = proto.num_classes
            del proto

            def backbone(
                name: str = model_name, weights: dict[str, Tensor] = state
            ) -> VisionBackbone:
                made = build_backbone(
                    name, grad_checkpointing=grad_checkpointing, text_cache_dir=cache
                )
                made.load_state_dict(weights)
                return made

            gen = torch.Generator().manual_seed(0)
            images = torch.rand(batch_size, 3, size, size, generator=gen).to(device)
            targets = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
            seconds: dict[str, float] = {}
            peaks: dict[str, float | None] = {}
            for group in groups:
                prepared = {
                    m: prepare_method(
                        m, backbone, images, targets, precision=precision, warmup=warmup
                    )
                    for m in group
                }
                for _ in range(repeats):
                    for p in prepared.values():
                        time_steps(p, device, steps, clock)
                for m, p in prepared.items():
                    seconds[m] = statistics.median(p.times)
                    peaks[m] = p.peak_mb
                    if log is not None:
                        log(f"{model_name} {m}: {seconds[m] * 1e3:.1f} ms/step")
                del prepared
                _release_memory(device)
            vanilla = seconds.get("vanilla")
            for m in methods:
                secs, peak = seconds[m], peaks[m]
                results.append(
                    Result(
                        method=m,
                        model=model_name,
                        batch_size=batch_size,
                        precision=precision,
                        images_per_s=round(batch_size / secs, 2),
                        ratio_to_vanilla=round(secs / vanilla, 3) if vanilla else None,
                        peak_mem_mb=round(peak, 1) if peak is not None else None,
                    )
                )
    return results


def environment(device: torch.device) -> str:
    """One line describing the hardware and software versions."""
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{hw}; torch {torch.__version__}; python {platform.python_version()}"


def render_table(results: Sequence[Result], title: str) -> Table:
    """The results as a rich table."""
    table = Table(title=title)
    for col in ("model", "method", "batch", "precision", "img/s", "x vanilla", "peak MiB"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for r in results:
        table.add_row(
            r.model,
            r.method,
            str(r.batch_size),
            r.precision,
            f"{r.images_per_s:.1f}",
            "-" if r.ratio_to_vanilla is None else f"{r.ratio_to_vanilla:.2f}",
            "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}",
        )
    return table


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    p.add_argument("--precision", default="32-true", choices=PRECISIONS)
    p.add_argument("--models", type=_csv, default=["tiny"], help=f"comma list of {MODELS}")
    p.add_argument(
        "--methods", type=_csv, default=list(METHODS), help=f"comma list of {tuple(METHODS)}"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="one method in memory at a time (large models); default: interleaved repeats",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: OpenMP threads on shared, busy cores wait on "
        "each other; 0 keeps torch's default)",
    )
    p.add_argument(
        "--json", action="store_true", help="JSON lines on stdout (the table goes to stderr)"
    )
    p.add_argument(
        "--clock",
        default="wall",
        choices=tuple(CLOCKS),
        help="wall (default) or cpu: this process's CPU time, steadier with one thread on a "
        "shared machine (CPU devices only)",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="run the whole comparison this many times, each in a fresh process, and "
        "report the median and range over the runs (default 1: this process only)",
    )
    args = p.parse_args(argv)
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for m in args.methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if args.precision == "16-mixed" and not args.device.startswith("cuda"):
        p.error("16-mixed needs --device cuda (use bf16-mixed on the CPU)")
    if args.clock == "cpu" and args.device != "cpu":
        p.error("--clock cpu measures CPU time and cannot see GPU work; use --clock wall")
    if min(args.batch_size, args.steps, args.repeats, args.runs) < 1 or args.warmup < 0:
        p.error("batch size, steps, repeats and runs must be >= 1 and warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[Result]:
    """Run the benchmark and print the table (and JSON lines with ``--json``).

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The measured rows.
    """
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.runs > 1:
            return _run_processes(list(sys.argv[1:] if argv is None else argv), args)
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> list[Result]:
    device = torch.device(args.device)
    console = Console(stderr=args.json)
    env = environment(device)
    console.print(f"[dim]{env}[/dim]")
    results = run_benchmark(
        models=args.models,
        methods=args.methods,
        device=device,
        precision=args.precision,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        grad_checkpointing=args.grad_checkpointing,
        sequential=args.sequential,
        log=lambda line: console.print(f"[dim]{line}[/dim]"),
        clock=args.clock,
    )
    suffix = ", gradient checkpointing" if args.grad_checkpointing else ""
    console.print(render_table(results, f"Training step throughput ({env}{suffix})"))
    if args.json:
        for r in results:
            sys.stdout.write(json.dumps(asdict(r)) + "\n")
        sys.stdout.flush()
    return results


@dataclass(frozen=True)
class Spread:
    """Median, lowest and highest value of one quantity over several runs."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (at least one)."""
        return cls(statistics.median(values), min(values), max(values))

    def text(self, fmt: str) -> str:
        """``median (low-high)`` with ``fmt`` (e.g. ``".2f"``) for each number."""
        return f"{self.median:{fmt}} ({self.low:{fmt}}-{self.high:{fmt}})"


@dataclass(frozen=True)
class Summary:
    """One (model, method) over several runs: the spread of each measured quantity."""

    method: str
    model: str
    batch_size: int
    precision: str
    runs: int
    images_per_s: Spread
    ratio_to_vanilla: Spread | None
    peak_mem_mb: Spread | None


def summarise_runs(runs: Sequence[Sequence[Result]]) -> list[Summary]:
    """Combine the rows of several runs of the same comparison, row by row.

    Args:
        runs: One list of :class:`Result` per run, all with the same (model, method)
            rows in the same order.

    Returns:
        One :class:`Summary` per row; a ratio or memory spread is ``None`` when any run
        lacks that value.

    Raises:
        ValueError: If there are no runs or the runs measured different rows.
    """
    if not runs:
        raise ValueError("no runs to summarise")
    keys = [[(r.model, r.method) for r in run] for run in runs]
    if any(k != keys[0] for k in keys):
        raise ValueError(f"runs measured different rows: {keys}")
    out = []
    for rows in zip(*runs, strict=True):
        first = rows[0]
        ratios = [r.ratio_to_vanilla for r in rows]
        peaks = [r.peak_mem_mb for r in rows]
        out.append(
            Summary(
                method=first.method,
                model=first.model,
                batch_size=first.batch_size,
                precision=first.precision,
                runs=len(rows),
                images_per_s=Spread.of([r.images_per_s for r in rows]),
                ratio_to_vanilla=None
                if any(v is None for v in ratios)
                else Spread.of([v for v in ratios if v is not None]),
                peak_mem_mb=None
                if any(v is None for v in peaks)
                else Spread.of([v for v in peaks if v is not None]),
            )
        )
    return out


def render_summary(summaries: Sequence[Summary], title: str) -> Table:
    """The summaries as a rich table: median (lowest-highest) of each quantity."""
    table = Table(title=title)
    cols = ("model", "method", "batch", "runs", "img/s", "x vanilla", "peak MiB")
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for s in summaries:
        table.add_row(
            s.model,
            s.method,
            str(s.batch_size),
            str(s.runs),
            s.images_per_s.text(".2f"),
            "-" if s.ratio_to_vanilla is None else s.ratio_to_vanilla.text(".2f"),
            "-" if s.peak_mem_mb is None else s.peak_mem_mb.text(".0f"),
        )
    return table


def _without_runs(argv: list[str]) -> list[str]:
    """``argv`` without ``--runs N`` / ``--runs=N`` and ``--json``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--runs":
            skip = True
        elif not arg.startswith("--runs=") and arg != "--json":
            out.append(arg)
    return out


def _run_processes(argv: list[str], args: argparse.Namespace) -> list[Result]:
    """Run the comparison ``args.runs`` times in fresh processes and print the spread."""
    console = Console(stderr=args.json, width=150)
    child = [sys.executable, str(Path(__file__).resolve()), *_without_runs(argv), "--json"]
    runs: list[list[Result]] = []
    for i in range(args.runs):
        console.print(f"[dim]run {i + 1}/{args.runs}: {' '.join(child[1:])}[/dim]")
        done = subprocess.run(child, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"run {i + 1} failed with exit status {done.returncode}")
        runs.append([Result(**json.loads(line)) for line in done.stdout.splitlines() if line])
    summaries = summarise_runs(runs)
    env = environment(torch.device(args.device))
    console.print(render_summary(summaries, f"Median (lowest-highest) of {args.runs} runs ({env})"))
    if args.json:
        for s in summaries:
            sys.stdout.write(json.dumps(asdict(s)) + "\n")
        sys.stdout.flush()
    return [r for run in runs for r in run]


if __name__ == "__main__":
    main()

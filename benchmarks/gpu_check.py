"""One command that checks cfmask on a CUDA machine and writes every figure to a JSON file.

On a machine with at least one CUDA device it runs, within about eight minutes:

1. **Step throughput** of open_clip ViT-B/16 and ViT-B/32 (random weights, 224 px,
   bf16 mixed precision) for every method in :data:`CHECKED_METHODS`: images/s, the
   step-time ratio to vanilla fine-tuning and the peak of
   ``torch.cuda.max_memory_allocated`` while the method's objective is built and runs
   its warm-up steps, minus what was allocated before (the input batch). The batch
   starts at the paper's 512 images and is halved until it fits. The timing code is
   ``benchmarks/step_throughput.py``'s, one method in memory at a time.
2. **Fused versus explicit attention at bf16**: the largest difference between the
   logits with ``scaled_dot_product_attention`` and with the explicit softmax
   attention that the relevance map records, next to the difference that bf16 itself
   makes (explicit attention, bf16 versus fp32). The check passes when the first is
   at most twice the second plus ``1e-3`` times the logits' range.
3. **A 2-process DDP step** of the paper's method (object mask, single-image fill) on
   ViT-B/32 when two CUDA devices exist (NCCL): after one AdamW step both ranks must
   hold identical student weights. With one device it is reported as not run.

``--dry-run`` runs the same code on the CPU with the unit tests' tiny models (2-block
timm and open_clip ViTs, 32-px images), a batch of 4, one step per measurement and the
DDP step on two CPU processes (gloo), so CI exercises every part of the check. Without a CUDA device
and without ``--dry-run`` the command refuses with exit status 2.

Adding a method is one entry in ``step_throughput.METHODS`` plus its name in
:data:`CHECKED_METHODS`.

Examples::

    python benchmarks/gpu_check.py --out gpu_check.json     # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/dry.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

__all__ = ("CHECKED_METHODS", "CheckSettings", "main", "settings_for")

HERE = Path(__file__).resolve().parent

#: Methods measured by the throughput section (keys of ``step_throughput.METHODS``):
#: vanilla fine-tuning, feature distillation, the paper's method (object mask from the
#: all-block attention-gradient relevance, single-image fill), its last-block variant
#: and the cached frozen-teacher relevance.
CHECKED_METHODS = ("vanilla", "fd", "obj_single", "obj_single_last1", "obj_single_cached")

#: Exit status when no CUDA device is present and ``--dry-run`` was not given.
EXIT_NO_CUDA = 2


def _load_step_throughput() -> ModuleType:
    """``benchmarks/step_throughput.py`` as a module (the benchmarks are not a package)."""
    name = "step_throughput"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "step_throughput.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {HERE / 'step_throughput.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class CheckSettings:
    """Sizes of one check: the real ones on CUDA, tiny ones for ``--dry-run``.

    Attributes:
        device: Where the throughput and attention sections run.
        models: Benchmark model names (``step_throughput.MODELS``) keyed by the label
            the report uses (``"vit_b16"``, ``"vit_b32"``).
        batch_size: First batch tried per model (halved on out-of-memory errors).
        min_batch_size: Smallest batch tried before giving up on a model.
        warmup: Untimed steps per method.
        steps: Timed steps per repeat.
        repeats: Timed repeats per method (median).
        ddp_backend: ``"nccl"`` or ``"gloo"``.
        ddp_model: Benchmark model of the DDP step.
        ddp_batch_size: Images per rank in the DDP step.
        budget_s: Seconds after which the remaining sections are skipped.
    """

    device: str
    models: dict[str, str]
    batch_size: int
    min_batch_size: int
    warmup: int
    steps: int
    repeats: int
    ddp_backend: str
    ddp_model: str
    ddp_batch_size: int
    budget_s: float = 480.0


def settings_for(dry_run: bool) -> CheckSettings:
    """The sizes of the real check (``dry_run=False``) or of the CPU dry-run."""
    if dry_run:
        return CheckSettings(
            device="cpu",
            models={"vit_b16": "unit", "vit_b32": "unit_clip"},
            batch_size=4,
            min_batch_size=4,
            warmup=1,
            steps=1,
            repeats=1,
            ddp_backend="gloo",
            ddp_model="unit",
            ddp_batch_size=2,
        )
    return CheckSettings(
        device="cuda",
        models={"vit_b16": "vit_b16", "vit_b32": "vit_b32"},
        batch_size=512,
        min_batch_size=16,
        warmup=3,
        steps=5,
        repeats=3,
        ddp_backend="nccl",
        ddp_model="vit_b32",
        ddp_batch_size=128,
    )


@dataclass
class Report:
    """Everything the check measured; written as JSON."""

    dry_run: bool
    device_name: str
    device_count: int
    torch_version: str
    cuda_version: str | None
    python_version: str
    precision: str = "bf16-mixed"
    throughput: list[dict[str, Any]] = field(default_factory=list)
    attention: list[dict[str, Any]] = field(default_factory=list)
    ddp: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    section_seconds: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    passed: bool = True


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, dry-run)"


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


# ------------------------------------------------------------------ throughput
def check_throughput(settings: CheckSettings, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Step throughput and peak memory of every checked method on every model.

    Each model starts at ``settings.batch_size`` and halves the batch on an
    out-of-memory error, down to ``settings.min_batch_size``.

    Returns:
        One JSON-ready row per (model, method): the fields of
        ``step_throughput.Result`` plus ``label`` (the report's model name).
    """
    bench = _load_step_throughput()
    device = torch.device(settings.device)
    rows: list[dict[str, Any]] = []
    for label, model in settings.models.items():
        batch = settings.batch_size
        while True:
            try:
                results = bench.run_benchmark(
                    models=[model],
                    methods=list(CHECKED_METHODS),
                    device=device,
                    precision="bf16-mixed",
                    batch_size=batch,
                    steps=settings.steps,
                    warmup=settings.warmup,
                    repeats=settings.repeats,
                    sequential=True,
                    log=log,
                )
                break
            except RuntimeError as err:
                if not _is_out_of_memory(err) or batch // 2 < settings.min_batch_size:
                    raise
                log(f"{label}: batch {batch} does not fit, trying {batch // 2}")
                batch //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        rows += [{"label": label, **asdict(r)} for r in results]
    return rows


# ------------------------------------------------------------------- attention
def check_attention(settings: CheckSettings) -> list[dict[str, Any]]:
    """Fused versus explicit attention under bf16 autocast, per model.

    Returns:
        One row per model: ``fused_vs_explicit`` (max |difference| of the logits, both
        under bf16 autocast), ``bf16_vs_fp32`` (explicit attention, bf16 autocast versus
        fp32), ``logit_range`` (max |logit| in fp32), ``tolerance`` and ``ok``.
    """
    bench = _load_step_throughput()
    device = torch.device(settings.device)
    rows = []
    for label, model in settings.models.items():
        torch.manual_seed(0)
        backbone = bench.build_backbone(model).to(device).eval()
        size = backbone.data_config.image_size
        gen = torch.Generator().manual_seed(1)
        images = torch.rand(8, 3, size, size, generator=gen).to(device)
        with torch.no_grad():
            bench.set_fused_attention(backbone, False)
            fp32 = backbone(images).float()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                explicit = backbone(images).float()
                bench.set_fused_attention(backbone, True)
                fused = backbone(images).float()
        fused_vs_explicit = float((fused - explicit).abs().max())
        bf16_vs_fp32 = float((explicit - fp32).abs().max())
        logit_range = float(fp32.abs().max())
        tolerance = 2 * bf16_vs_fp32 + 1e-3 * logit_range
        rows.append(
            {
                "label": label,
                "model": model,
                "fused_vs_explicit": fused_vs_explicit,
                "bf16_vs_fp32": bf16_vs_fp32,
                "logit_range": logit_range,
                "tolerance": tolerance,
                "ok": fused_vs_explicit <= tolerance,
            }
        )
        del backbone
    return rows


# ------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def check_ddp(settings: CheckSettings, folder: Path) -> dict[str, Any]:
    """One DDP step of the paper's method on two processes; ranks must agree afterwards.

    Returns:
        ``{"ran": False, "reason": ...}`` with fewer than two CUDA devices on a real
        check; otherwise ``ran``, ``world_size``, ``backend``, ``model``, per-rank
        ``loss`` and ``step_s``, ``max_weight_difference`` between the ranks after the
        step and ``ok``.
    """
    if settings.ddp_backend == "nccl" and torch.cuda.device_count() < 2:
        found = torch.cuda.device_count()
        return {"ran": False, "reason": f"needs 2 CUDA devices, found {found}"}
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(folder)]
    cmd += ["--ddp-init", init_method, "--ddp-settings", json.dumps(asdict(settings))]
    # rank 1 in a child process, rank 0 here (saves one start-up of Python and torch)
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    errors = []
    try:
        ddp_worker(folder, settings, rank=0, init_method=init_method)
    except Exception as err:  # report the failure instead of losing the other sections
        errors.append(f"rank 0 failed: {err!r}")
        child.kill()
    _, err_text = child.communicate(timeout=300)
    if child.returncode != 0:
        errors.append(f"rank 1 exited with {child.returncode}: {err_text[-2000:]}")
    if errors:
        return {"ran": True, "ok": False, "errors": errors}
    ranks = [json.loads((folder / f"ddp_rank{r}.json").read_text()) for r in range(2)]
    difference = max(r["max_weight_difference"] for r in ranks)
    return {
        "ran": True,
        "world_size": 2,
        "backend": settings.ddp_backend,
        "model": settings.ddp_model,
        "batch_per_rank": settings.ddp_batch_size,
        "loss": [r["loss"] for r in ranks],
        "step_s": [r["step_s"] for r in ranks],
        "max_weight_difference": difference,
        "ok": difference == 0.0,
    }


def ddp_worker(folder: Path, settings: CheckSettings, *, rank: int, init_method: str) -> None:
    """One rank of :func:`check_ddp`'s two-process group; writes ``ddp_rank<rank>.json``.

    Args:
        folder: Where the rank's result is written.
        settings: The check's sizes (backend, model, batch per rank).
        rank: 0 or 1.
        init_method: The process group's ``tcp://host:port`` rendezvous.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from cfmask import CounterfactualObjective

    bench = _load_step_throughput()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dist.init_process_group(settings.ddp_backend, init_method=init_method, rank=rank, world_size=2)
    if settings.ddp_backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.manual_seed(0)  # the same weights on every rank
    make_kwargs, _ = bench.METHODS["obj_single"]
    objective = CounterfactualObjective(bench.build_backbone(settings.ddp_model), **make_kwargs())
    objective = objective.to(device).train()
    device_ids = [rank] if device.type == "cuda" else None
    wrapped = DistributedDataParallel(objective, device_ids=device_ids)
    params = [p for p in objective.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    size = objective.student.data_config.image_size
    gen = torch.Generator().manual_seed(100 + rank)  # a different batch on every rank
    images = torch.rand(settings.ddp_batch_size, 3, size, size, generator=gen).to(device)
    targets = torch.randint(0, objective.student.num_classes, (len(images),), generator=gen)
    torch.manual_seed(rank)
    start = time.perf_counter()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        loss = wrapped(images, targets.to(device)).loss
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    step_s = time.perf_counter() - start
    flat = torch.cat([p.detach().float().reshape(-1) for p in params])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    difference = float((gathered[0] - gathered[1]).abs().max())
    out = {"loss": float(loss.detach()), "step_s": step_s, "max_weight_difference": difference}
    (folder / f"ddp_rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------ main
def run_check(settings: CheckSettings, dry_run: bool, log: Callable[[str], None]) -> Report:
    """Run every section in turn, skipping the rest once ``settings.budget_s`` is spent."""
    device = torch.device(settings.device)
    report = Report(
        dry_run=dry_run,
        device_name=_device_name(device),
        device_count=torch.cuda.device_count() if device.type == "cuda" else 0,
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        python_version=platform.python_version(),
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cfmask-gpu-check-") as tmp:
        sections: list[tuple[str, Callable[[], Any]]] = [
            ("throughput", lambda: check_throughput(settings, log)),
            ("attention", lambda: check_attention(settings)),
            ("ddp", lambda: check_ddp(settings, Path(tmp))),
        ]
        for name, run in sections:
            elapsed = time.perf_counter() - start
            if elapsed > settings.budget_s:
                report.skipped.append(f"{name}: time budget of {settings.budget_s:.0f} s spent")
                continue
            log(f"section {name} ...")
            t0 = time.perf_counter()
            setattr(report, name, run())
            report.section_seconds[name] = round(time.perf_counter() - t0, 2)
    report.wall_s = round(time.perf_counter() - start, 2)
    attention_ok = all(row["ok"] for row in report.attention)
    ddp_ok = report.ddp.get("ok", True) if report.ddp.get("ran") else True
    report.passed = attention_ok and ddp_ok and not report.skipped
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run every section on the CPU with tiny models and sizes (for CI)",
    )
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON report path")
    p.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--ddp-init", help=argparse.SUPPRESS)
    p.add_argument("--ddp-settings", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Report | None:
    """Run the check and write the JSON report.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The report (``None`` in a DDP worker process).

    Raises:
        SystemExit: With status 2 when no CUDA device is available and ``--dry-run``
            was not given, and with status 1 when a check failed.
    """
    args = parse_args(argv)
    if args.ddp_worker is not None:
        settings = CheckSettings(**json.loads(args.ddp_settings))
        ddp_worker(args.ddp_worker, settings, rank=1, init_method=args.ddp_init)
        return None
    if not args.dry_run and not torch.cuda.is_available():
        sys.stderr.write(
            "gpu_check: no CUDA device is available (torch.cuda.is_available() is False), "
            "so there is nothing to measure. Run it on a machine with a CUDA GPU, or pass "
            "--dry-run to run the same code on the CPU with tiny models.\n"
        )
        raise SystemExit(EXIT_NO_CUDA)
    settings = settings_for(args.dry_run)
    threads = torch.get_num_threads()
    if args.dry_run:
        torch.set_num_threads(1)
    try:
        report = run_check(settings, args.dry_run, lambda line: sys.stderr.write(line + "\n"))
    finally:
        torch.set_num_threads(threads)
    args.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    _print_summary(report, args.out)
    if not report.passed:
        raise SystemExit(1)
    return report


def _print_summary(report: Report, out: Path) -> None:
    print(f"{report.device_name}; torch {report.torch_version}; CUDA {report.cuda_version}")
    for row in report.throughput:
        ratio = row["ratio_to_vanilla"]
        peak = row["peak_mem_mb"]
        print(
            f"  {row['label']:8s} {row['method']:17s} batch {row['batch_size']:4d}  "
            f"{row['images_per_s']:9.1f} img/s  "
            f"x{'-' if ratio is None else f'{ratio:.2f}'} vanilla  "
            f"peak {'-' if peak is None else f'{peak:.0f}'} MiB"
        )
    for row in report.attention:
        print(
            f"  attention {row['label']}: fused vs explicit {row['fused_vs_explicit']:.3g}, "
            f"bf16 vs fp32 {row['bf16_vs_fp32']:.3g} -> {'ok' if row['ok'] else 'FAILED'}"
        )
    if report.ddp.get("ran"):
        print(f"  DDP: {report.ddp}")
    else:
        print(f"  DDP: not run ({report.ddp.get('reason', 'skipped')})")
    for line in report.skipped:
        print(f"  skipped {line}")
    verdict = "passed" if report.passed else "FAILED"
    print(f"{verdict} in {report.wall_s:.0f} s; report written to {out}")


if __name__ == "__main__":
    main()

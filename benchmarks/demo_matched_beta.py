"""Masking at matched β on the demo benchmark: the question of the paper's Table 1.

On Shifted Fashion-MNIST (``cfmask demo``, see ``docs/demo.md``), fine-tunes the
demo's pre-trained teacher with feature distillation at each β of ``--betas`` and,
for every β, with each way of building the distillation input:

* ``FD (no mask)``: :class:`~cfmask.losses.FeatureDistillationLoss` on the clean
  image (x_cf = x);
* ``object/single t``: :class:`~cfmask.masking.ObjectMasker` at CAM threshold ``t``
  (relevance: :class:`~cfmask.relevance.AttentionGradRelevance` of the student),
  :class:`~cfmask.masking.SingleImageRefiller`;
* ``context/single t``: :class:`~cfmask.masking.ContextMasker` at ``t``, single fill;
* ``random/single 0.5``: :class:`~cfmask.masking.RandomMasker` with ratio 0.5, single fill.

Vanilla fine-tuning and WiSE-FT mixtures of it (alpha = 0.25, 0.5, 0.75, evaluation only)
are added per seed as references. Everything else is the demo's own default protocol:
the data of :func:`cfmask.demo.data.build_benchmark`, the teacher of
:func:`cfmask.demo.teacher.load_or_pretrain_teacher` (reused from the demo's cache when
``--cache-dir`` points to it), and :meth:`cfmask.demo.runner.Runner.fine_tune` for every
run (a :class:`~cfmask.finetuner.CounterfactualFineTuner` trained by a Lightning
``Trainer``: 80 steps of 64, AdamW lr 8e-4, warm-up + cosine). Only the β and the
thresholds differ from the demo, and they are fixed by the command line, not chosen:
this is an analysis, and no set (ID validation or OOD) is used to pick anything.

For each run the script also records the mean fraction of patches the masker masked
during training (``mask %``, from the fine-tuner's last mask of every step).

It prints a Markdown table (mean ± sample std over seeds) of ID validation, ID test,
OOD average (the mean of the five OOD sets per seed, then averaged), ``anti-cue``,
``new-backgrounds``, the masked fraction, and the OOD-average difference to FD at the
same β and seed (paired, then averaged), and writes every per-seed number to ``--json``.

Examples::

    # the investigation in docs/demo.md (reuses the teacher of `cfmask demo --output
    # /tmp/demo_full`; about 10 minutes on a shared 2-core machine; one torch thread
    # was several times faster there than two while another job held a core)
    OMP_NUM_THREADS=1 python benchmarks/demo_matched_beta.py \\
        --cache-dir /tmp/demo_full/cache --json /tmp/matched_beta.json

    # smoke test: the demo's --quick profile, one seed, β = 1 (about 2 minutes)
    python benchmarks/demo_matched_beta.py --quick --cache-dir /tmp/demo_quick/cache
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl
import numpy as np

from cfmask.demo import report
from cfmask.demo.data import build_benchmark, load_fashion_mnist
from cfmask.demo.runner import PROFILES, MethodSpec, Profile, Runner
from cfmask.demo.teacher import load_or_pretrain_teacher

__all__ = ("VARIANTS", "Variant", "main", "run")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of building the distillation input.

    Attributes:
        key: Identifier in the JSON output.
        label: Display name.
        masker: ``"object"``, ``"context"``, ``"random"`` or ``None`` (FD without masks).
        param: The masker's threshold (object/context) or ratio (random).
    """

    key: str
    label: str
    masker: str | None = None
    param: float = 0.0

    def spec(self) -> MethodSpec:
        """Return the demo :class:`MethodSpec` of this variant (single-image fill)."""
        if self.masker is None:
            return MethodSpec(self.key, self.label, feature="clean")
        return MethodSpec(
            self.key,
            self.label,
            masker=self.masker,
            refill="single",
            feature="counterfactual",
            group="ours",
        )

    def profile(self, base: Profile) -> Profile:
        """Return ``base`` with this variant's threshold or ratio in its fine-tuning recipe."""
        ft = base.finetune
        if self.masker == "object":
            ft = dataclasses.replace(ft, object_threshold=self.param)
        elif self.masker == "context":
            ft = dataclasses.replace(ft, context_threshold=self.param)
        elif self.masker == "random":
            ft = dataclasses.replace(ft, random_ratio=self.param)
        return dataclasses.replace(base, finetune=ft)


VARIANTS: tuple[Variant, ...] = (
    Variant("fd", "FD (no mask)"),
    Variant("object-0.2", "object/single t=0.2", "object", 0.2),
    Variant("object-0.4", "object/single t=0.4", "object", 0.4),
    Variant("context-0.4", "context/single t=0.4", "context", 0.4),
    Variant("context-0.6", "context/single t=0.6", "context", 0.6),
    Variant("random-0.5", "random/single p=0.5", "random", 0.5),
)

WISE_ALPHAS = (0.25, 0.5, 0.75)


class MaskFraction(pl.Callback):
    """Average, over training steps, the fraction of patches the fine-tuner masked."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Record the mask of this step (``None`` for FD and vanilla)."""
        mask = outputs.get("mask") if isinstance(outputs, Mapping) else None
        if mask is not None:
            self.values.append(float(mask.float().mean()))

    def mean(self) -> float | None:
        """The mean masked fraction in percent, or ``None`` when nothing was masked."""
        return 100.0 * float(np.mean(self.values)) if self.values else None


def _ood_avg(res: dict[str, Any], ood: Sequence[str]) -> float:
    return float(np.mean([res["ood"][k] for k in ood]))


def _fmt(values: Sequence[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    arr = np.asarray(vals, dtype=np.float64)
    if len(arr) == 1:
        return f"{arr[0]:.1f}"
    return f"{arr.mean():.1f} ± {arr.std(ddof=1):.1f}"


def markdown_table(rows: Sequence[dict[str, Any]], ood: Sequence[str]) -> str:
    """Format the aggregated rows as a Markdown table.

    Args:
        rows: One entry per (β, method) with ``label``, ``beta`` and ``seeds`` (per-seed
            results with ``val``, ``id``, ``ood``, ``mask_pct`` and ``d_ood_vs_fd``).
        ood: OOD set names.

    Returns:
        The table text.
    """
    head = (
        "| β | method | ID val | ID test | OOD avg | anti-cue | new-backgrounds "
        "| mask % | ΔOOD vs FD |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for row in rows:
        s = row["seeds"]
        beta = "-" if row["beta"] is None else f"{row['beta']:g}"
        lines.append(
            f"| {beta} | {row['label']} | {_fmt([r['val'] for r in s])} "
            f"| {_fmt([r['id'] for r in s])} | {_fmt([_ood_avg(r, ood) for r in s])} "
            f"| {_fmt([r['ood']['anti-cue'] for r in s])} "
            f"| {_fmt([r['ood']['new-backgrounds'] for r in s])} "
            f"| {_fmt([r.get('mask_pct') for r in s])} "
            f"| {_fmt([r.get('d_ood_vs_fd') for r in s])} |"
        )
    return "\n".join(lines)


def run(
    profile: Profile,
    betas: Sequence[float],
    seeds: Sequence[int],
    variants: Sequence[Variant],
    cache_dir: Path,
    data_dir: Path | None = None,
    *,
    allow_install: bool = True,
) -> dict[str, Any]:
    """Run the grid and return every per-seed result.

    Args:
        profile: The demo profile (data sizes, teacher and fine-tuning recipe).
        betas: Feature-distillation weights; every variant runs at every β.
        seeds: Training seeds.
        variants: The distillation inputs to compare.
        cache_dir: Folder of the cached teacher (the demo's ``OUTPUT/cache``).
        data_dir: Extra folder to search for Fashion-MNIST.
        allow_install: Whether a missing dataset may be installed with apt-get.

    Returns:
        ``{"rows", "ood_sets", "teacher", "zero_shot", "seconds"}``; ``rows`` holds the
        vanilla and WiSE-FT references, then one entry per (β, variant).
    """
    t_start = time.perf_counter()
    bench = build_benchmark(
        profile.bench, load_fashion_mnist(data_dir, allow_install=allow_install)
    )
    ood = bench.ood_names
    data_key = json.dumps(dataclasses.asdict(profile.bench), sort_keys=True)
    teacher, trained = load_or_pretrain_teacher(
        bench.pretrain, profile.model, profile.pretrain, cache_dir, data_key
    )
    print(("trained" if trained else "reused cached") + f" teacher {teacher}", flush=True)
    rows: dict[tuple[float | None, str], dict[str, Any]] = {}

    def add(beta: float | None, key: str, label: str, res: dict[str, Any]) -> None:
        rows.setdefault((beta, key), {"beta": beta, "key": key, "label": label, "seeds": []})[
            "seeds"
        ].append(res)

    with tempfile.TemporaryDirectory() as work:
        base = Runner(profile, bench, teacher, Path(work))
        zero_shot = base.evaluate(base.backbone())
        for seed in seeds:
            res, state = base.fine_tune(MethodSpec("vanilla", "Vanilla FT"), seed=seed, beta=0.0)
            add(None, "vanilla", "Vanilla FT", {"seed": seed, **res})
            print(
                f"vanilla seed {seed}: ID {res['id']:.1f} OOD {_ood_avg(res, ood):.1f} "
                f"({res['seconds']:.0f} s)",
                flush=True,
            )
            for alpha, wres in zip(WISE_ALPHAS, base.wise_curve(state, WISE_ALPHAS), strict=True):
                add(
                    None,
                    f"wise-ft-{alpha:g}",
                    f"WiSE-FT {report.ALPHA}={alpha:g}",
                    {"seed": seed, **wres},
                )
            for beta in betas:
                fd_ood: float | None = None
                for variant in variants:
                    runner = Runner(variant.profile(profile), bench, teacher, Path(work))
                    meter = MaskFraction()
                    res, _ = runner.fine_tune(
                        variant.spec(), seed=seed, beta=beta, callbacks=[meter]
                    )
                    res = {"seed": seed, **res, "mask_pct": meter.mean()}
                    if variant.masker is None:
                        fd_ood = _ood_avg(res, ood)
                    elif fd_ood is not None:
                        res["d_ood_vs_fd"] = _ood_avg(res, ood) - fd_ood
                    add(beta, variant.key, variant.label, res)
                    print(
                        f"seed {seed} β={beta:g} {variant.label}: val {res['val']:.1f} "
                        f"ID {res['id']:.1f} OOD {_ood_avg(res, ood):.1f} "
                        f"mask {res['mask_pct'] or 0:.1f}% ({res['seconds']:.0f} s)",
                        flush=True,
                    )
    ordered = [r for k, r in rows.items() if k[0] is None]
    ordered += sorted(
        (r for k, r in rows.items() if k[0] is not None),
        key=lambda r: (r["beta"], [v.key for v in variants].index(r["key"])),
    )
    for row in ordered:
        row["aggregate"] = report.aggregate(row["seeds"], ood)
    return {
        "rows": ordered,
        "ood_sets": ood,
        "teacher": str(teacher),
        "zero_shot": zero_shot,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the grid, print the table and write the JSON.

    Args:
        argv: Arguments; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the demo's --quick profile, one seed, β = 1 (smoke test)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("cfmask-demo-output/cache"),
        help="the demo's cache folder (the teacher is trained there if absent)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST IDX files"
    )
    parser.add_argument("--betas", type=str, default=None, help="comma-separated (default 1,3)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never try to apt-get install dataset-fashion-mnist",
    )
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "default"]
    betas = [float(b) for b in (args.betas or ("1" if args.quick else "1,3")).split(",")]
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 2)))
    out = run(
        profile,
        betas,
        seeds,
        VARIANTS,
        args.cache_dir,
        args.data_dir,
        allow_install=not args.no_install,
    )
    print(
        f"\nprofile {profile.name}, seeds {seeds}, {out['seconds']:.0f} s; "
        "accuracy (%), mean ± sample std over seeds\n"
    )
    print(markdown_table(out["rows"], out["ood_sets"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report.write_json(
            args.json,
            {"profile": profile.name, "betas": betas, "seeds": seeds, "command": sys.argv, **out},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How far do the demo's figures move with the thread count, the CPU kernels and the seed?

Fine-tunes the shipped pre-trained model of ``cfmask demo`` with vanilla fine-tuning
and FD (no mask, beta = 1) on the ``--quick`` profile's data (1 000 images per test
set), once per setting, each in a fresh process:

* torch threads 1, 2 and 4 (``FineTuneConfig.threads``; the demo pins 1);
* ``ATEN_CPU_CAPABILITY=default`` (torch's portable kernels, no AVX2/AVX-512) against
  the machine's own capability (``torch.backends.cpu.get_cpu_capability()``);
* training seeds 0, 1, 2 at the pinned setting (the spread the demo reports).

It prints a Markdown table of ID and OOD-average accuracy (%) per setting and the
largest absolute difference to the pinned setting (1 thread, machine kernels, seed 0).

Example::

    python benchmarks/demo_reproducibility.py --json /tmp/repro.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _worker(threads: int, seed: int) -> dict[str, Any]:
    import dataclasses

    import numpy as np
    import torch

    from cfmask.demo import (
        PROFILES,
        SHIPPED_WEIGHTS,
        Job,
        JobRunner,
        build_benchmark,
        fd_method,
        load_fashion_mnist,
        vanilla_method,
    )

    profile = PROFILES["quick"]
    profile = dataclasses.replace(
        profile,
        workers=1,
        finetune=dataclasses.replace(profile.finetune, threads=threads),
    )
    bench = build_benchmark(profile.bench, load_fashion_mnist(), profile.pretrain.pool)
    ood = bench.ood_names
    out: dict[str, Any] = {"capability": str(torch.backends.cpu.get_cpu_capability())}
    with JobRunner(profile, bench, SHIPPED_WEIGHTS) as runner:
        jobs = [Job("vanilla", seed, vanilla_method()), Job("fd", seed, fd_method(1.0))]
        res = runner.run(jobs)
        zs = runner.evaluate_zero_shot()
    for key, r in [("zero-shot", zs), *((k, v.result) for k, v in res.items())]:
        assert r is not None
        out[key] = {"id": r["id"], "ood_avg": float(np.mean([r["ood"][k] for k in ood]))}
    return out


SETTINGS: list[tuple[str, int, str | None, int]] = [
    ("1 thread (pinned)", 1, None, 0),
    ("2 threads", 2, None, 0),
    ("4 threads", 4, None, 0),
    ("1 thread, ATEN_CPU_CAPABILITY=default", 1, "default", 0),
    ("2 threads, ATEN_CPU_CAPABILITY=default", 2, "default", 0),
    ("1 thread, seed 1", 1, None, 1),
    ("1 thread, seed 2", 1, None, 2),
]


def _run_setting(threads: int, capability: str | None, seed: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    cmd = [sys.executable, __file__, "--worker", str(threads), str(seed)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    """Run every setting (two at a time) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=2, type=int, metavar=("THREADS", "SEED"))
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--parallel", type=int, default=2, help="settings run at once")
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(*args.worker)))
        return 0
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(_run_setting, t, c, s) for _, t, c, s in SETTINGS]
        results = [f.result() for f in futures]
    ref = results[0]
    print(
        "| setting | CPU kernels | zero-shot ID / OOD | vanilla ID / OOD | FD β=1 ID / OOD "
        "| max abs diff to pinned |"
    )
    print("|---|---|---:|---:|---:|---:|")
    rows = []
    for (name, threads, cap, seed), res in zip(SETTINGS, results, strict=True):
        diff = max(
            abs(res[m][k] - ref[m][k])
            for m in ("zero-shot", "vanilla", "fd")
            for k in ("id", "ood_avg")
        )
        cells = [
            f"{res[m]['id']:.1f} / {res[m]['ood_avg']:.2f}" for m in ("zero-shot", "vanilla", "fd")
        ]
        print(f"| {name} | {res['capability']} | " + " | ".join(cells) + f" | {diff:.2f} |")
        rows.append(
            {
                "setting": name,
                "threads": threads,
                "aten_cpu_capability": cap,
                "seed": seed,
                **res,
                "max_abs_diff": diff,
            }
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does a weaker planted cue bring the demo into the paper's regime (checks R1-R4)?

A lever of the benchmark, not of the method: fine-tunes the shipped pre-trained model
of ``cfmask demo`` on the default recipe with vanilla fine-tuning (and its WiSE-FT
mixture at alpha = 0.5) and FD (no mask) at every beta of the grid, on data whose
fine-tuning, validation and ID test images show their class's cue with the given
probability (``BenchmarkConfig.cue_strength``; the benchmark uses 0.9). Beta follows
the demo's written rule on ID validation. One training seed (0), 1 000 images per test
set, the demo's pinned single thread; no masking variant is ever run.

It prints one JSON line per cue strength with the four ``(ID, OOD avg)`` pairs, the
chosen beta, every regime check and the number passed.

Example::

    python benchmarks/demo_cue_strength.py 0.9 0.75 0.6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def probe(cue: float) -> dict[str, Any]:
    """Run vanilla, WiSE-FT and FD at one cue strength and evaluate R1-R4."""
    from cfmask.demo import (
        PROFILES,
        SHIPPED_WEIGHTS,
        Job,
        JobRunner,
        build_benchmark,
        choose_beta,
        fd_method,
        load_fashion_mnist,
        ood_avg,
        regime_checks,
        vanilla_method,
    )

    base = PROFILES["default"]
    bench_config = dataclasses.replace(base.bench, n_test=1000, cue_strength=cue)
    profile = dataclasses.replace(base, bench=bench_config, workers=1)
    bench = build_benchmark(profile.bench, load_fashion_mnist(), profile.pretrain.pool)
    ood = bench.ood_names
    betas = profile.finetune.betas
    with JobRunner(profile, bench, SHIPPED_WEIGHTS) as runner:
        zero_shot = runner.evaluate_zero_shot()
        jobs = [Job("vanilla", 0, vanilla_method(), wise_alphas=(0.5,))]
        jobs += [Job(f"fd {b:g}", 0, fd_method(b)) for b in betas]
        out = runner.run(jobs)
    vanilla, wise = out["vanilla"].result, out["vanilla"].wise[0]
    assert vanilla is not None
    fd = {b: out[f"fd {b:g}"].result for b in betas}
    beta, _ = choose_beta(vanilla["val"], {b: r["val"] for b, r in fd.items() if r})

    def pair(result: Any) -> tuple[float, float]:
        return (round(result["id"], 2), round(ood_avg(result, ood), 2))

    checks = regime_checks(pair(zero_shot), pair(vanilla), pair(wise), pair(fd[beta]))
    return {
        "cue_strength": cue,
        "zero_shot": pair(zero_shot),
        "vanilla": pair(vanilla),
        "wise_0.5": pair(wise),
        "beta": beta,
        "fd": {f"{b:g}": pair(r) for b, r in fd.items()},
        "checks": {c.name: [round(c.value, 3), c.passed] for c in checks},
        "passed": sum(c.passed for c in checks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cue", type=float, nargs="+", help="cue strengths in [0, 1]")
    for cue in parser.parse_args().cue:
        print(json.dumps(probe(cue)), flush=True)


if __name__ == "__main__":
    main()

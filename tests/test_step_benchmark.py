"""benchmarks/step_throughput.py runs end to end on the CPU and prints one JSON line a row.

Only the shape of the output is checked here; timings come from running the benchmark.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchmark_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "step_throughput", ROOT / "benchmarks" / "step_throughput.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark_module()
    argv = ["--json", "--models", "tiny,tiny_clip", "--batch-size", "4"]
    argv += ["--steps", "1", "--warmup", "1", "--repeats", "1"]
    results = bench.main(argv)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    keys = {
        "method",
        "model",
        "batch_size",
        "precision",
        "images_per_s",
        "ratio_to_vanilla",
        "peak_mem_mb",
    }
    assert len(lines) == len(results) == 2 * len(bench.METHODS)
    assert all(set(line) == keys for line in lines)
    assert {line["method"] for line in lines} == set(bench.METHODS)
    assert all(line["images_per_s"] > 0 and line["batch_size"] == 4 for line in lines)
    vanilla = [line for line in lines if line["method"] == "vanilla"]
    assert all(line["ratio_to_vanilla"] == 1.0 for line in vanilla)


def test_benchmark_rejects_fp16_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark_module()
    assert bench.parse_args(["--precision", "bf16-mixed"]).precision == "bf16-mixed"
    with pytest.raises(SystemExit):
        bench.parse_args(["--precision", "16-mixed"])
    assert "16-mixed needs --device cuda" in capsys.readouterr().err

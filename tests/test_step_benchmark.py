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


def test_summarise_runs_gives_median_and_range_per_row() -> None:
    bench = _benchmark_module()
    result = bench.Result

    def run(ips: float, ratio: float | None, peak: float | None) -> list[object]:
        return [result("obj_single", "tiny", 8, "32-true", ips, ratio, peak)]

    runs = [run(10.0, 2.5, 100.0), run(14.0, 2.7, 90.0), run(11.0, 2.9, None)]
    (row,) = bench.summarise_runs(runs)
    assert (row.runs, row.model, row.method) == (3, "tiny", "obj_single")
    assert (row.images_per_s.median, row.images_per_s.low, row.images_per_s.high) == (
        11.0,
        10.0,
        14.0,
    )
    assert (row.ratio_to_vanilla.median, row.ratio_to_vanilla.low) == (2.7, 2.5)
    assert row.ratio_to_vanilla.high == 2.9
    assert row.peak_mem_mb is None  # one run could not measure it
    assert row.images_per_s.text(".1f") == "11.0 (10.0-14.0)"
    with pytest.raises(ValueError, match="different rows"):
        bench.summarise_runs([run(1.0, 1.0, 1.0), []])


def test_without_runs_drops_the_runs_and_json_options() -> None:
    bench = _benchmark_module()
    argv = ["--models", "tiny", "--runs", "3", "--json", "--runs=2", "--steps", "1"]
    assert bench._without_runs(argv) == ["--models", "tiny", "--steps", "1"]


def test_cpu_clock_is_refused_for_gpu_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark_module()
    assert bench.parse_args(["--clock", "cpu"]).clock == "cpu"
    with pytest.raises(SystemExit):
        bench.parse_args(["--clock", "cpu", "--device", "cuda"])
    assert "cannot see GPU work" in capsys.readouterr().err

"""benchmarks/gpu_check.py: refuses clearly without CUDA, and its CPU dry-run runs every part.

The dry-run goes through the same functions as the real check (throughput through
``step_throughput.run_benchmark``, the bf16 attention comparison, a 2-process DDP
step), with the unit tests' tiny models on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_refuses_without_cuda_and_names_dry_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    check = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exc:
        check.main(["--out", str(out)])
    assert exc.value.code == check.EXIT_NO_CUDA != 0
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--dry-run" in err
    assert not out.exists()


def test_dry_run_exercises_every_section(tmp_path: Path) -> None:
    check = _gpu_check()
    out = tmp_path / "report.json"
    report = check.main(["--dry-run", "--out", str(out)])
    data = json.loads(out.read_text())
    assert report is not None and data["passed"] is True and data["dry_run"] is True
    assert data["device_name"].startswith("CPU") and data["precision"] == "bf16-mixed"
    assert set(data["section_seconds"]) == {"throughput", "attention", "ddp"}

    rows = data["throughput"]
    labels = ("vit_b16", "vit_b32")
    assert [(r["label"], r["method"]) for r in rows] == [
        (label, m) for label in labels for m in check.CHECKED_METHODS
    ]
    for label in labels:
        own = {r["method"]: r for r in rows if r["label"] == label}
        vanilla = own["vanilla"]["images_per_s"]
        for row in own.values():
            assert row["precision"] == "bf16-mixed" and row["batch_size"] == 4
            # the ratio is vanilla's throughput over the method's (same batch)
            assert row["ratio_to_vanilla"] == pytest.approx(vanilla / row["images_per_s"], rel=1e-2)

    for row in data["attention"]:
        expected = 2 * row["bf16_vs_fp32"] + 1e-3 * row["logit_range"]
        assert row["tolerance"] == pytest.approx(expected)
        assert row["ok"] == (row["fused_vs_explicit"] <= expected)
        assert row["bf16_vs_fp32"] > 0  # bf16 autocast really ran

    ddp = data["ddp"]
    assert ddp["ran"] and ddp["backend"] == "gloo" and ddp["world_size"] == 2
    assert ddp["max_weight_difference"] == 0.0 and ddp["ok"]
    assert ddp["loss"][0] != ddp["loss"][1]  # each rank trained on its own batch


def test_real_settings_use_cuda_bf16_and_the_paper_batch() -> None:
    check = _gpu_check()
    real, dry = check.settings_for(False), check.settings_for(True)
    assert real.device == "cuda" and real.ddp_backend == "nccl"
    assert real.models == {"vit_b16": "vit_b16", "vit_b32": "vit_b32"}
    assert real.batch_size == 512 and real.budget_s <= 480
    assert dry.device == "cpu" and set(dry.models) == set(real.models)

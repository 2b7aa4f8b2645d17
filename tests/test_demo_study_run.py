"""``cfmask demo study`` on fake data: the whole pipeline, its statistics and resume.

One tiny study (2 data seeds x 2 training seeds, a one-block ViT, two steps per run)
is run once per module; the tests read its files and recompute the reported figures
by hand from the per-cell accuracies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cfmask.demo.app import main as demo_main
from cfmask.demo.stats import Interval
from cfmask.demo.study import StudyConfig, ood_at_id, wise_dominance
from cfmask.demo.study_report import METHOD_LABELS
from cfmask.demo.study_run import StudyConfigMismatchError, run_study

from .helpers.demo_fakes import fake_fashion, hide_system_data, tiny_profile, tiny_weights

T975_DF1 = 12.7062
OOD = ("resample", "sketch", "rendition", "new-backgrounds", "anti-cue")
CFG = StudyConfig(data_seeds=(1, 2), train_seeds=2, workers=1)


def _curve_excess(cell: dict[str, Any], key: str) -> float | None:
    r = cell["results"]
    path = [r["zero-shot"], *cell["wise"]["vanilla"], r["vanilla"]]
    at = ood_at_id([(p["id"], _ood(p)) for p in path], r[key]["id"])
    return None if at is None else _ood(r[key]) - at


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the tiny study once: folder, data, weights and its study.json."""
    root = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    hide_system_data(mp, root)
    fake_fashion(root / "data", n_train=260, n_test=120)
    weights = tiny_weights(root, root / "data")
    out = root / "out"
    payload = run_study(
        CFG, out, root / "data", allow_install=False, weights=weights, profile=tiny_profile()
    )
    yield {"root": root, "out": out, "weights": weights, "payload": payload, "mp": mp}
    mp.undo()


def _rerun(study: dict[str, Any], out: Path, cfg: StudyConfig = CFG) -> dict[str, Any]:
    """Run the tiny study again into ``out`` (resuming whatever cells it holds)."""
    return run_study(
        cfg,
        out,
        study["root"] / "data",
        allow_install=False,
        weights=study["weights"],
        profile=tiny_profile(),
    )


def _ood(result: dict[str, Any]) -> float:
    return sum(result["ood"][k] for k in OOD) / len(OOD)


def _cells(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def _no_seconds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_no_seconds(v) for v in value]
    return value


def _without_timings(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without wall times (every figure and every cell result kept)."""
    return _no_seconds({k: v for k, v in payload.items() if k not in ("timings", "environment")})


def test_study_writes_every_output_and_method(study: dict[str, Any]) -> None:
    out = study["out"]
    for name in ("study.json", "study.md", "study-tradeoff.png", "study-forest.png"):
        assert (out / name).stat().st_size > 0
    cells = _cells(out)
    assert sorted((c["data_seed"], c["train_seed"]) for c in cells) == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    trained = set(cells[0]["results"])
    assert trained == {
        "zero-shot",
        "vanilla",
        "fd",
        "kd",
        "object-single",
        "context-single",
        "random-single",
        "object-exact-single",
        "lp-ft",
        "soup",
        "wise-kd",
    }
    assert set(cells[0]["wise"]) == {"vanilla", "object-single"}
    assert [p["alpha"] for p in cells[0]["wise"]["object-single"]] == [0.25, 0.5, 0.75]
    payload = json.loads((out / "study.json").read_text())
    assert list(payload["methods"]) == list(METHOD_LABELS)
    md = (out / "study.md").read_text()
    for row in payload["comparisons"]:
        assert row["name"] in md
    # The two draws are different benchmarks: zero-shot accuracy differs between them
    # and is the same for both training seeds of a draw.
    zs = {(c["data_seed"], c["train_seed"]): c["results"]["zero-shot"]["id"] for c in cells}
    assert zs[(1, 0)] == zs[(1, 1)] and zs[(2, 0)] == zs[(2, 1)]


def test_comparisons_match_a_hand_computation(study: dict[str, Any]) -> None:
    cells = _cells(study["out"])
    payload = study["payload"]
    by_name = {row["name"]: row for row in payload["comparisons"]}
    for name, var, ref in (
        ("CAM object - FD", "object-single", "fd"),
        ("CAM object - LP-FT", "object-single", "lp-ft"),
        ("CAM object - uniform soup", "object-single", "soup"),
    ):
        per_d: dict[int, list[float]] = {}
        for c in cells:
            r = c["results"]
            per_d.setdefault(c["data_seed"], []).append(_ood(r[var]) - _ood(r[ref]))
        means = [sum(v) / 2 for _, v in sorted(per_d.items())]
        head = by_name[name]["ood_avg"]["across_data_seeds"]
        mean = sum(means) / 2
        half = T975_DF1 * abs(means[0] - means[1]) / 2  # s / sqrt(2) with two values
        assert head["n"] == 2
        assert head["mean"] == pytest.approx(mean, abs=1e-3)
        assert head["ci95_low"] == pytest.approx(mean - half, abs=2e-3)
        assert head["ci95_high"] == pytest.approx(mean + half, abs=2e-3)
        pooled = by_name[name]["ood_avg"]["pooled_pairs"]
        values = [d for _, v in sorted(per_d.items()) for d in v]
        assert pooled["n"] == 4
        assert pooled["mean"] == pytest.approx(sum(values) / 4, abs=1e-3)
    # WiSE-FT 0.5 is vanilla's mixture at alpha 0.5; the soup is evaluated, not trained.
    wise = [next(p for p in c["wise"]["vanilla"] if p["alpha"] == 0.5) for c in cells]
    got = payload["methods"]["wise-ft"]["id"]["across_data_seeds"]["mean"]
    by_d: dict[int, list[float]] = {}
    for c, w in zip(cells, wise, strict=True):
        by_d.setdefault(c["data_seed"], []).append(w["id"])
    assert got == pytest.approx(sum(sum(v) / 2 for v in by_d.values()) / 2, abs=1e-3)


def test_matched_id_and_fig6_follow_the_written_rules(study: dict[str, Any]) -> None:
    cells = _cells(study["out"])
    payload = study["payload"]
    m = payload["matched_id"]
    oods = {
        k: payload["methods"][k]["ood_avg"]["across_data_seeds"]["mean"]
        for k in ("object-single", "context-single", "random-single")
    }
    assert m["best"] == max(oods, key=lambda k: (oods[k], -list(oods).index(k)))
    best = m["best"]
    # Recompute the matched-ID differences from the cells' WiSE-FT curves: the best
    # variant above the curve at its ID; and that minus KD's height above the curve.
    for key, diff in (
        ("minus_wise_ft_at_matched_id", lambda c: _curve_excess(c, best)),
        (
            "minus_kd_at_matched_id",
            lambda c: (
                None
                if _curve_excess(c, best) is None or _curve_excess(c, "kd") is None
                else _curve_excess(c, best) - _curve_excess(c, "kd")
            ),
        ),
    ):
        expected = [d for d in (diff(c) for c in cells) if d is not None]
        entry = m[key]
        assert entry["cells_matched"] == len(expected) and entry["cells"] == 4
        if expected:
            assert entry["ood_avg"]["pooled_pairs"]["mean"] == pytest.approx(
                sum(expected) / len(expected), abs=1e-3
            )

    # Fig. 6: one reading per interior alpha, by the written rule.
    def interval(d: dict[str, Any]) -> Interval:
        low = math.nan if d["ci95_low"] is None else d["ci95_low"]
        high = math.nan if d["ci95_high"] is None else d["ci95_high"]
        return Interval(d["mean"], low, high, d["n"])

    for alpha, e in payload["fig6"]["wise_ours_minus_ours"].items():
        assert float(alpha) in CFG.wise_alphas
        assert e["reading"] == wise_dominance(
            interval(e["id"]["across_data_seeds"]), interval(e["ood_avg"]["across_data_seeds"])
        )
    assert payload["fig6"]["wise_ours_reading"] in ("supports", "contradicts", "unresolved")
    # The power figures are those of CAM object - FD.
    head = next(r for r in payload["comparisons"] if r["name"] == "CAM object - FD")
    iv = head["ood_avg"]["across_data_seeds"]
    assert payload["power"]["half_width"] == pytest.approx(
        (iv["ci95_high"] - iv["ci95_low"]) / 2, abs=2e-3
    )


def test_resume_runs_only_missing_cells_and_gives_the_same_table(
    study: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(study["out"], out)
    (out / "cells" / "d2-s1.json").unlink()  # the cell that was running when killed
    (out / "cells" / "d2-s1.json.tmp").write_text('{"data_seed": 2, "tra')  # half-written
    (out / "study.json").unlink()
    payload = _rerun(study, out)
    assert payload["timings"]["cells_run_now"] == 1
    assert payload["timings"]["cells_resumed"] == 3
    assert _without_timings(payload) == _without_timings(study["payload"])
    rerun = json.loads((out / "cells" / "d2-s1.json").read_text())
    first = json.loads((study["out"] / "cells" / "d2-s1.json").read_text())
    assert _no_seconds(rerun) == _no_seconds(first)


def test_more_training_seeds_reuse_the_finished_cells(
    study: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "extended"
    shutil.copytree(study["out"], out)
    before = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    payload = _rerun(study, out, dataclasses.replace(CFG, train_seeds=3))
    assert payload["timings"]["cells_run_now"] == 2  # d1-s2 and d2-s2
    assert payload["timings"]["cells_resumed"] == 4
    assert {p.name: p.read_bytes() for p in (out / "cells").glob("*.json") if p.name in before} == (
        before
    )
    head = next(r for r in payload["comparisons"] if r["name"] == "CAM object - FD")
    assert head["ood_avg"]["pooled_pairs"]["n"] == 6


def test_a_folder_of_another_study_is_refused(study: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "other"
    shutil.copytree(study["out"], out)
    with pytest.raises(StudyConfigMismatchError, match="differs in: study"):
        _rerun(study, out, dataclasses.replace(CFG, beta=3.0))


def test_design_errors_name_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="two or more training seeds"):
        StudyConfig(train_seeds=1)
    with pytest.raises(ValueError, match="two or more distinct data seeds"):
        StudyConfig(data_seeds=(3, 3))
    assert demo_main(["study", "--train-seeds", "1", "--output", str(tmp_path)]) == 2
    assert "two or more training seeds" in capsys.readouterr().out


def test_the_default_design_is_the_written_plan() -> None:
    cfg = StudyConfig()
    assert cfg.data_seeds == (1, 2, 3, 4, 5, 6) and cfg.train_seeds == 2
    assert 0 not in cfg.data_seeds  # the draw the demo's choices were made on
    assert (cfg.beta, cfg.object_threshold, cfg.context_threshold, cfg.random_ratio) == (
        1.0,
        0.5,
        0.5,
        0.75,
    )
    assert (cfg.wise_kd_weight, cfg.wise_kd_temperature, cfg.wise_kd_alpha) == (1.0, 10.0, 0.5)


_KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from helpers.demo_fakes import tiny_profile
from cfmask.demo.study import StudyConfig
from cfmask.demo.study_run import run_study
cfg = StudyConfig(data_seeds=(1, 2), train_seeds=2, workers=1)
run_study(cfg, Path(sys.argv[1]), Path(sys.argv[2]), allow_install=False,
          weights=Path(sys.argv[3]), profile=tiny_profile())
"""


@pytest.mark.slow
def test_sigkill_half_way_then_resume_gives_the_same_table(
    study: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "HOME": str(study["root"] / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("CFMASK_DATA_DIR", None)
    tests_dir = str(Path(__file__).parent)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILL_SCRIPT,
            str(out),
            str(study["root"] / "data"),
            str(study["weights"]),
            tests_dir,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "cells").glob("*.json"))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "cells").glob("*.json")))
    assert 2 <= done < 4
    payload = _rerun(study, out)
    assert payload["timings"]["cells_resumed"] == done
    assert _without_timings(payload) == _without_timings(study["payload"])
    assert not math.isnan(payload["power"]["within_sd"])

"""The demo's pure arithmetic against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cfmask.demo.app import headline
from cfmask.demo.stats import (
    Interval,
    choose_beta,
    choose_by_validation,
    compare_to_reference,
    mean_ci95,
    paired_deltas,
    regime_checks,
    t_quantile_975,
)


def test_regime_checks_on_a_benchmark_in_the_regime() -> None:
    checks = regime_checks((70.0, 60.0), (85.0, 55.0), (84.5, 61.0), (83.5, 57.5))
    by_name = {c.name: c for c in checks}
    assert by_name["R1 zero-shot ID / vanilla ID"].value == pytest.approx(70 / 85, abs=1e-4)
    assert by_name["R2 vanilla ID - zero-shot ID"].value == pytest.approx(15.0)
    assert by_name["R2 vanilla OOD - zero-shot OOD"].value == pytest.approx(-5.0)
    assert by_name["R3 WiSE(0.5) ID - vanilla ID"].value == pytest.approx(-0.5)
    assert by_name["R3 WiSE(0.5) OOD - max(zero-shot, vanilla) OOD"].value == pytest.approx(1.0)
    assert by_name["R4 FD ID - vanilla ID"].value == pytest.approx(-1.5)
    assert by_name["R4 FD OOD - vanilla OOD"].value == pytest.approx(2.5)
    assert all(c.passed for c in checks)
    assert [c.threshold for c in checks] == [0.8, 5.0, -2.0, -1.0, 0.0, -2.0, 2.0]


def test_regime_checks_that_fail() -> None:
    # The first measurement quoted in the benchmark's design notes: R1 0.79, R3 ID -7.
    checks = regime_checks((71.6, 63.8), (90.2, 54.8), (83.2, 63.4), (89.2, 59.2))
    passed = {c.name: c.passed for c in checks}
    assert not passed["R1 zero-shot ID / vanilla ID"]  # 71.6 / 90.2 = 0.794
    assert not passed["R3 WiSE(0.5) ID - vanilla ID"]  # -7.0
    assert not passed["R3 WiSE(0.5) OOD - max(zero-shot, vanilla) OOD"]  # 63.4 - 63.8
    assert passed["R2 vanilla ID - zero-shot ID"] and passed["R2 vanilla OOD - zero-shot OOD"]
    assert passed["R4 FD ID - vanilla ID"] and passed["R4 FD OOD - vanilla OOD"]  # -1.0, +4.4
    # Exactly on a threshold passes; OOD that rises under fine-tuning fails R2.
    edge = regime_checks((80.0, 50.0), (100.0, 51.0), (99.0, 51.0), (98.0, 53.0))
    edge_pass = {c.name: c.passed for c in edge}
    assert edge_pass["R1 zero-shot ID / vanilla ID"]
    assert not edge_pass["R2 vanilla OOD - zero-shot OOD"]
    assert edge_pass["R3 WiSE(0.5) ID - vanilla ID"]
    assert edge_pass["R3 WiSE(0.5) OOD - max(zero-shot, vanilla) OOD"]
    assert edge_pass["R4 FD ID - vanilla ID"] and edge_pass["R4 FD OOD - vanilla OOD"]
    with pytest.raises(ValueError, match="positive"):
        regime_checks((1.0, 1.0), (0.0, 1.0), (1.0, 1.0), (1.0, 1.0))


def test_check_as_dict_names_pass() -> None:
    c = regime_checks((70.0, 60.0), (85.0, 55.0), (84.5, 61.0), (83.5, 57.5))[0]
    assert c.as_dict() == {
        "name": "R1 zero-shot ID / vanilla ID",
        "value": round(70 / 85, 4),
        "threshold": 0.8,
        "direction": ">=",
        "pass": True,
    }


def test_mean_ci95_by_hand() -> None:
    # [1, 2, 3]: mean 2, s = 1, half-width t(2) * 1 / sqrt(3) = 4.3027 / 1.7321 = 2.4841.
    iv = mean_ci95([1.0, 2.0, 3.0])
    assert iv.mean == pytest.approx(2.0)
    assert iv.ci95_low == pytest.approx(2.0 - 2.48417, abs=1e-4)
    assert iv.ci95_high == pytest.approx(2.0 + 2.48417, abs=1e-4)
    assert iv.n == 3 and iv.excludes_zero is False
    # [0.5, 1.5]: s = sqrt(0.5), half-width 12.7062 * sqrt(0.5) / sqrt(2) = 6.3531.
    iv2 = mean_ci95([0.5, 1.5])
    assert (iv2.ci95_low, iv2.ci95_high) == (pytest.approx(-5.3531), pytest.approx(7.3531))
    # Five equal-ish positive differences exclude zero.
    iv5 = mean_ci95([1.0, 1.2, 0.8, 1.1, 0.9])
    # s = sqrt(0.1 / 4) = 0.15811; half = 2.7764 * 0.15811 / sqrt(5) = 0.19632.
    assert iv5.ci95_low == pytest.approx(1.0 - 0.19632, abs=1e-4)
    assert iv5.excludes_zero
    one = mean_ci95([0.7])
    assert one.mean == 0.7 and math.isnan(one.ci95_low) and not one.excludes_zero
    assert one.as_dict() == {"mean": 0.7, "ci95_low": None, "ci95_high": None, "n": 1}
    with pytest.raises(ValueError):
        mean_ci95([])


def test_t_quantiles() -> None:
    assert t_quantile_975(1) == pytest.approx(12.7062)
    assert t_quantile_975(2) == pytest.approx(4.3027)
    assert t_quantile_975(4) == pytest.approx(2.7764)
    assert t_quantile_975(30) == pytest.approx(2.0423)
    # Published values above the table: df 40 -> 2.0211, 60 -> 2.0003, 120 -> 1.9799.
    assert t_quantile_975(40) == pytest.approx(2.0211, abs=2e-4)
    assert t_quantile_975(60) == pytest.approx(2.0003, abs=2e-4)
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=2e-4)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_beta_rule() -> None:
    # Vanilla 88: 0.1 and 0.3 keep within 2 points (87.5, 86.0), 1 and 3 do not.
    assert choose_beta(88.0, {0.1: 87.5, 0.3: 86.0, 1.0: 85.9, 3.0: 80.0}) == (0.3, True)
    # Not monotone: the largest qualifying beta wins.
    assert choose_beta(88.0, {0.1: 85.0, 0.3: 87.0, 1.0: 86.5, 3.0: 80.0}) == (1.0, True)
    # None qualifies: the smallest beta, flagged.
    assert choose_beta(88.0, {0.1: 85.0, 0.3: 84.0}) == (0.1, False)
    assert choose_beta(88.0, {0.1: 80.0}, tolerance=10.0) == (0.1, True)
    with pytest.raises(ValueError):
        choose_beta(1.0, {})


def test_choose_by_validation() -> None:
    assert choose_by_validation({0.3: 80.0, 0.4: 82.0, 0.5: 81.0}) == 0.4
    assert choose_by_validation({0.6: 81.0, 0.3: 81.0}) == 0.3
    with pytest.raises(ValueError):
        choose_by_validation({})


def test_paired_deltas() -> None:
    assert paired_deltas([3.0, 5.0], [1.0, 6.0]) == [2.0, -1.0]
    with pytest.raises(ValueError, match="same seeds"):
        paired_deltas([1.0], [1.0, 2.0])


def test_headline_reads_the_interval() -> None:
    resolved = headline(
        {"id": Interval(-0.2, -0.5, 0.1, 3), "ood_avg": Interval(1.5, 0.4, 2.6, 3)}, "object"
    )
    assert resolved.endswith("resolved: more OOD accuracy than FD.")
    worse = headline(
        {"id": Interval(0.0, -1.0, 1.0, 3), "ood_avg": Interval(-1.0, -1.8, -0.2, 3)}, "x"
    )
    assert "resolved: less OOD accuracy than FD" in worse
    single = headline(
        {
            "id": Interval(0.1, math.nan, math.nan, 1),
            "ood_avg": Interval(0.3, math.nan, math.nan, 1),
        },
        "x",
    )
    assert "one seed" in single and "nothing resolved" in single


def test_compare_to_reference_names_what_moved() -> None:
    def payload(van_id: float, anti: float, extra: bool = True) -> dict[str, Any]:
        methods: dict[str, Any] = {
            "vanilla": {
                "id": {"mean": van_id},
                "ood_avg": {"mean": 40.0},
                "ood": {"anti-cue": {"mean": anti}, "sketch": {"mean": 30.0}},
            }
        }
        if extra:
            methods["fd"] = {"id": {"mean": 1.0}, "ood_avg": {"mean": 1.0}, "ood": {}}
        return {"methods": methods}

    ref = payload(80.0, 50.0)
    assert compare_to_reference(payload(80.5, 49.6), ref, 1.0) == []
    moved = compare_to_reference(payload(78.0, 53.0), ref, 1.0)
    assert moved == [
        "method 'vanilla', set 'id': 80.0 -> 78.0 (moved -2.0, tolerance 1)",
        "method 'vanilla', set 'anti-cue': 50.0 -> 53.0 (moved +3.0, tolerance 1)",
    ]
    assert compare_to_reference(payload(80.0, 50.0, extra=False), ref, 1.0) == [
        "method 'fd' is missing from the new results"
    ]

"""The claims study's pre-registered analysis against hand-computed values."""

from __future__ import annotations

import math

import pytest

from cfmask.demo.stats import Interval
from cfmask.demo.study import (
    COMPARISONS,
    VarianceComponents,
    best_variant,
    fig6_reading,
    ood_at_id,
    plan_seeds,
    planned_half_width,
    two_level_interval,
    variance_components,
    verdict,
    wise_dominance,
)


def test_two_level_interval_by_hand() -> None:
    # Data seed 0: 0.2, 0.4, 0.9 (mean 0.5); data seed 1: 0.1, 0.3 (mean 0.2);
    # data seed 2: 1.0, 0.6, 0.8 (mean 0.8).
    deltas = {2: [1.0, 0.6, 0.8], 0: [0.2, 0.4, 0.9], 1: [0.1, 0.3]}
    iv = two_level_interval(deltas)
    # Across data seeds: mean of (0.5, 0.2, 0.8) = 0.5, s = 0.3, t_{0.975,2} = 4.3027.
    half = 4.3027 * 0.3 / math.sqrt(3)
    assert iv.across_data_seeds.mean == pytest.approx(0.5)
    assert iv.across_data_seeds.n == 3
    assert iv.across_data_seeds.ci95_low == pytest.approx(0.5 - half, abs=1e-9)
    assert iv.across_data_seeds.ci95_high == pytest.approx(0.5 + half, abs=1e-9)
    # Pooled: eight values, mean 4.3 / 8, sample variance by hand, t_{0.975,7} = 2.3646.
    values = [1.0, 0.6, 0.8, 0.2, 0.4, 0.9, 0.1, 0.3]
    m = 4.3 / 8
    s2 = sum((v - m) ** 2 for v in values) / 7
    assert iv.pooled_pairs.mean == pytest.approx(m)
    assert iv.pooled_pairs.n == 8
    assert iv.pooled_pairs.ci95_high - m == pytest.approx(2.3646 * math.sqrt(s2 / 8))
    # Per data seed, sorted by seed; seed 1 has two values: t_{0.975,1} = 12.7062.
    assert list(iv.per_data_seed) == [0, 1, 2]
    assert iv.per_data_seed[1].mean == pytest.approx(0.2)
    assert iv.per_data_seed[1].ci95_high == pytest.approx(0.2 + 12.7062 * 0.1414214 / 1.4142136)


def test_two_level_interval_refuses_empty_input() -> None:
    with pytest.raises(ValueError, match="at least one data seed"):
        two_level_interval({})
    with pytest.raises(ValueError, match=r"without any paired difference: \[3\]"):
        two_level_interval({0: [1.0], 3: []})


def test_variance_components_by_hand() -> None:
    # Groups (0, 2), (4, 6), (8, 10): within-group variance 2 each (pooled 2, 3 dof);
    # group means 1, 5, 9 have variance 16; between**2 = 16 - 2 / 2 = 15.
    vc = variance_components({0: [0.0, 2.0], 1: [4.0, 6.0], 2: [8.0, 10.0]})
    assert vc.within == pytest.approx(math.sqrt(2.0))
    assert vc.between == pytest.approx(math.sqrt(15.0))
    one = variance_components({0: [1.0, 2.0, 3.0]})
    assert one.within == pytest.approx(1.0)
    assert math.isnan(one.between)
    with pytest.raises(ValueError, match="at least two differences"):
        variance_components({0: [1.0], 1: [2.0]})


def test_planned_half_width_and_plan_by_hand() -> None:
    vc = VarianceComponents(within=0.3, between=0.1)
    # D = 5, S = 3: 2.7764 * sqrt(0.01 / 5 + 0.09 / 15) = 2.7764 * sqrt(0.008).
    assert planned_half_width(vc, 5, 3) == pytest.approx(2.7764 * math.sqrt(0.008))
    plan = plan_seeds(vc, 0.25)
    # Fewest runs first: every design of 4..11 runs misses 0.25, e.g. (5, 2):
    # 2.7764 * sqrt(0.002 + 0.009) = 0.291; (4, 3): 3.1824 * sqrt(0.0025 + 0.0075) = 0.318.
    assert planned_half_width(vc, 5, 2) > 0.25
    assert planned_half_width(vc, 4, 3) > 0.25
    # 12 runs: (6, 2) gives 2.5706 * sqrt(0.01 / 6 + 0.09 / 12) = 0.246 and wins over (4, 3).
    assert (plan.data_seeds, plan.train_seeds, plan.runs) == (6, 2, 12)
    assert plan.half_width == pytest.approx(2.5706 * math.sqrt(0.01 / 6 + 0.09 / 12))
    with pytest.raises(ValueError, match="no design of at most 8 runs"):
        plan_seeds(vc, 0.25, max_runs=8)
    with pytest.raises(ValueError, match="unknown"):
        planned_half_width(VarianceComponents(0.3, math.nan), 4, 2)
    with pytest.raises(ValueError, match="D >= 2"):
        planned_half_width(vc, 1, 4)


def test_verdict_and_fig6_rule() -> None:
    above, below, across = (
        Interval(1, 0.2, 1.8, 4),
        Interval(-1, -1.8, -0.2, 4),
        Interval(0, -1, 1, 4),
    )
    assert [verdict(i) for i in (above, below, across)] == ["supports", "contradicts", "unresolved"]
    assert verdict(Interval(1.0, math.nan, math.nan, 1)) == "unresolved"
    assert wise_dominance(above, above) == "dominates"
    assert wise_dominance(above, below) == "does not dominate"
    assert wise_dominance(below, across) == "does not dominate"
    assert wise_dominance(above, across) == "unresolved"


def test_comparisons_are_fixed_and_distinct() -> None:
    names = [c.name for c in COMPARISONS]
    assert len(set(names)) == len(names) == 9
    pairs = [(c.variant, c.reference) for c in COMPARISONS]
    # The six of the masking claims, then Table 3's baselines against CAM object masks.
    assert pairs[:6] == [
        ("object-single", "fd"),
        ("context-single", "fd"),
        ("random-single", "fd"),
        ("object-exact-single", "fd"),
        ("object-exact-single", "object-single"),
        ("object-single", "random-single"),
    ]
    assert pairs[6:] == [
        ("object-single", "vanilla"),
        ("object-single", "lp-ft"),
        ("object-single", "soup"),
    ]
    assert all(c.variant != c.reference for c in COMPARISONS)


def test_ood_at_id_by_hand() -> None:
    curve = [(80.0, 76.0), (86.0, 74.0), (90.0, 67.0)]
    # On the second segment: 74 + (67 - 74) * (88 - 86) / (90 - 86) = 70.5.
    assert ood_at_id(curve, 88.0) == pytest.approx(70.5)
    assert ood_at_id(curve, 80.0) == pytest.approx(76.0)
    assert ood_at_id(curve, 79.9) is None and ood_at_id(curve, 90.1) is None
    # A path that turns back in ID: both segments hold ID 85; the higher OOD is taken.
    back = [(80.0, 70.0), (90.0, 80.0), (84.0, 60.0)]
    # First segment: 70 + 10 * 5 / 10 = 75; second: 80 - 20 * 5 / 6 = 63.33.
    assert ood_at_id(back, 85.0) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="two points"):
        ood_at_id([(1.0, 2.0)], 1.0)


def test_best_variant_and_fig6_rules() -> None:
    assert best_variant({"object-single": 1.0, "context-single": 2.0, "random-single": 2.0}) == (
        "context-single"
    )
    with pytest.raises(KeyError, match="random-single"):
        best_variant({"object-single": 1.0, "context-single": 2.0})
    assert fig6_reading({0.25: "does not dominate", 0.5: "dominates"}) == "contradicts"
    assert fig6_reading({0.25: "unresolved", 0.5: "unresolved"}) == "unresolved"
    assert fig6_reading({0.25: "unresolved", 0.75: "does not dominate"}) == "supports"

"""Pure arithmetic of the demo: pre-registered regime checks, selection rules and intervals.

Everything here is a small pure function of accuracies in percent, so that the
rules are written down (and tested) independently of any run. The thresholds are
fixed before any masking run is looked at; they describe the regime of the paper's
main experiment (CLIP ViT-B/32 fine-tuned on ImageNet; Xiao et al., CVPR 2023,
Tables 1-3):

* **R1** the pre-trained model is already good at the ID task: zero-shot ID /
  vanilla-FT ID >= 0.80 (paper: 63.4 / 75.9 = 0.84).
* **R2** fine-tuning gains ID and loses OOD: vanilla ID - zero-shot ID >= +5 and
  vanilla OOD-avg - zero-shot OOD-avg <= -2 (paper: +12.5 and -4.5).
* **R3** WiSE-FT bows: at alpha = 0.5, ID >= vanilla ID - 1 and OOD-avg >=
  max(zero-shot, vanilla) OOD-avg (paper: 76.6 vs 75.9; 52.4 vs 44.2 and 48.7).
* **R4** feature distillation without masks is nearly free in ID at the benchmark's
  beta: FD ID >= vanilla ID - 2 and FD OOD-avg >= vanilla OOD-avg + 2 (paper, beta = 30:
  +1.0 ID and +7.1 OOD).

The checks read only the pre-trained model and the vanilla, WiSE-FT and FD runs,
never a masking variant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = (
    "BETA_RULE",
    "REGIME_THRESHOLDS",
    "Check",
    "Interval",
    "choose_beta",
    "choose_by_validation",
    "compare_to_reference",
    "mean_ci95",
    "paired_deltas",
    "regime_checks",
    "t_quantile_975",
)

#: The pre-registered thresholds of the regime checks (see the module docstring).
REGIME_THRESHOLDS: dict[str, float] = {
    "R1 zero-shot ID / vanilla ID": 0.80,
    "R2 vanilla ID - zero-shot ID": 5.0,
    "R2 vanilla OOD - zero-shot OOD": -2.0,
    "R3 WiSE(0.5) ID - vanilla ID": -1.0,
    "R3 WiSE(0.5) OOD - max(zero-shot, vanilla) OOD": 0.0,
    "R4 FD ID - vanilla ID": -2.0,
    "R4 FD OOD - vanilla OOD": 2.0,
}

#: The rule that fixes beta, written down before any masking run.
BETA_RULE = (
    "beta = the largest value of the grid whose FD run (no mask, seed 0) keeps ID "
    "validation accuracy within {tolerance:g} points of vanilla fine-tuning (seed 0); "
    "the smallest beta of the grid if none does. Only the ID validation split is read."
)


@dataclass(frozen=True)
class Check:
    """One pre-registered check.

    Attributes:
        name: What is compared (one of :data:`REGIME_THRESHOLDS`).
        value: The measured value.
        threshold: The fixed threshold.
        direction: ``">="`` or ``"<="``: how ``value`` must compare to ``threshold``.
        passed: Whether it does.
    """

    name: str
    value: float
    threshold: float
    direction: str
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (``value``, ``threshold``, ``direction``, ``pass``)."""
        out = asdict(self)
        out["pass"] = out.pop("passed")
        return out


def _check(name: str, value: float, direction: str = ">=") -> Check:
    threshold = REGIME_THRESHOLDS[name]
    ok = value >= threshold if direction == ">=" else value <= threshold
    return Check(name, round(value, 4), threshold, direction, bool(ok))


def regime_checks(
    zero_shot: tuple[float, float],
    vanilla: tuple[float, float],
    wise: tuple[float, float],
    fd: tuple[float, float],
) -> list[Check]:
    """Evaluate R1-R4 from ``(ID, OOD-avg)`` accuracies in percent (means over seeds).

    Args:
        zero_shot: The pre-trained model.
        vanilla: Vanilla fine-tuning.
        wise: WiSE-FT at alpha = 0.5.
        fd: Feature distillation without masks at the benchmark's beta.

    Returns:
        The seven checks, in the order of :data:`REGIME_THRESHOLDS`.

    Raises:
        ValueError: If vanilla ID accuracy is not positive (R1 is undefined).

    Example:
        The paper's own figures (CLIP ViT-B/32, ImageNet) pass every check:

        >>> [c.passed for c in regime_checks((63.4, 48.7), (75.9, 44.2), (76.6, 52.4),
        ...                                  (76.9, 51.3))]
        [True, True, True, True, True, True, True]
    """
    if vanilla[0] <= 0:
        raise ValueError("vanilla ID accuracy must be positive to form the R1 ratio")
    return [
        _check("R1 zero-shot ID / vanilla ID", zero_shot[0] / vanilla[0]),
        _check("R2 vanilla ID - zero-shot ID", vanilla[0] - zero_shot[0]),
        _check("R2 vanilla OOD - zero-shot OOD", vanilla[1] - zero_shot[1], "<="),
        _check("R3 WiSE(0.5) ID - vanilla ID", wise[0] - vanilla[0]),
        _check(
            "R3 WiSE(0.5) OOD - max(zero-shot, vanilla) OOD",
            wise[1] - max(zero_shot[1], vanilla[1]),
        ),
        _check("R4 FD ID - vanilla ID", fd[0] - vanilla[0]),
        _check("R4 FD OOD - vanilla OOD", fd[1] - vanilla[1]),
    ]


def choose_beta(
    vanilla_val: float, fd_val: Mapping[float, float], tolerance: float = 2.0
) -> tuple[float, bool]:
    """Apply :data:`BETA_RULE`.

    Args:
        vanilla_val: Vanilla fine-tuning's ID validation accuracy (%).
        fd_val: FD's ID validation accuracy (%) by beta.
        tolerance: Allowed ID validation drop in points.

    Returns:
        ``(beta, met)``; ``met`` is ``False`` when no beta kept within the tolerance
        and the smallest beta was taken.

    Raises:
        ValueError: If ``fd_val`` is empty.

    Example:
        >>> choose_beta(88.0, {0.1: 87.5, 0.3: 86.1, 1.0: 85.9, 3.0: 80.0})
        (0.3, True)
    """
    if not fd_val:
        raise ValueError("choose_beta needs at least one beta")
    ok = [b for b, v in fd_val.items() if v >= vanilla_val - tolerance]
    if ok:
        return max(ok), True
    return min(fd_val), False


def choose_by_validation(val: Mapping[float, float]) -> float:
    """Pick the setting with the highest ID validation accuracy (ties: the smallest setting).

    Args:
        val: ID validation accuracy (%) by setting (a threshold or a masking rate).

    Returns:
        The chosen setting.

    Raises:
        ValueError: If ``val`` is empty.

    Example:
        >>> choose_by_validation({0.3: 80.0, 0.4: 81.0, 0.5: 81.0})
        0.4
    """
    if not val:
        raise ValueError("choose_by_validation needs at least one setting")
    return min(val, key=lambda k: (-val[k], k))


# Two-sided 95 % quantiles of Student's t distribution, t_{0.975, df}, df = 1..30.
_T975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom.

    Exact table values (4 decimals) for ``df <= 30``; above that the Cornish-Fisher
    expansion around the normal quantile 1.95996, accurate to 1e-4 there.

    Args:
        df: Degrees of freedom (>= 1).

    Returns:
        The quantile.

    Raises:
        ValueError: If ``df < 1``.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


@dataclass(frozen=True)
class Interval:
    """Mean and two-sided 95 % t-interval of a sample.

    Attributes:
        mean: Sample mean.
        ci95_low: Lower end (``nan`` with one value).
        ci95_high: Upper end (``nan`` with one value).
        n: Sample size.
    """

    mean: float
    ci95_low: float
    ci95_high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of zero."""
        return self.n > 1 and (self.ci95_low > 0 or self.ci95_high < 0)

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready mapping; the ends are ``None`` when undefined (one value)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 3)

        return {
            "mean": round(self.mean, 3),
            "ci95_low": num(self.ci95_low),
            "ci95_high": num(self.ci95_high),
            "n": self.n,
        }


def mean_ci95(values: Sequence[float]) -> Interval:
    """Mean and 95 % confidence interval ``mean +- t_{0.975, n-1} * s / sqrt(n)``.

    ``s`` is the sample standard deviation (``n - 1`` in the denominator).

    Args:
        values: The sample (for paired comparisons: the per-seed differences).

    Returns:
        The :class:`Interval`; with one value the ends are ``nan``.

    Raises:
        ValueError: If ``values`` is empty.

    Example:
        >>> iv = mean_ci95([1.0, 2.0, 3.0])
        >>> round(iv.ci95_low, 4), round(iv.ci95_high, 4)
        (-0.4842, 4.4842)
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = t_quantile_975(n - 1) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, n)


def paired_deltas(variant: Sequence[float], reference: Sequence[float]) -> list[float]:
    """Per-seed differences ``variant[i] - reference[i]`` (common random numbers).

    Args:
        variant: One value per seed.
        reference: One value per seed, same seeds in the same order.

    Returns:
        The differences.

    Raises:
        ValueError: If the lengths differ.
    """
    if len(variant) != len(reference):
        raise ValueError(
            f"paired comparison needs the same seeds: {len(variant)} vs {len(reference)} values"
        )
    return [float(a) - float(b) for a, b in zip(variant, reference, strict=True)]


def compare_to_reference(
    results: Mapping[str, Any], reference: Mapping[str, Any], tolerance: float
) -> list[str]:
    """List every figure of ``results`` that moved more than ``tolerance`` from ``reference``.

    Compares, for every method of the reference, the mean ID test accuracy, the mean
    accuracy on every OOD set and the OOD average (``results.json`` layout:
    ``methods[key]["id"|"ood_avg"]["mean"]`` and ``methods[key]["ood"][set]["mean"]``).

    Args:
        results: A new ``results.json`` payload.
        reference: The stored one.
        tolerance: Largest allowed absolute difference, in accuracy points.

    Returns:
        One message per moved figure, naming the method and the set; empty when
        everything is within the tolerance.

    Example:
        >>> ref = {"methods": {"vanilla": {"id": {"mean": 80.0}, "ood_avg": {"mean": 50.0},
        ...                                "ood": {"sketch": {"mean": 40.0}}}}}
        >>> new = {"methods": {"vanilla": {"id": {"mean": 80.4}, "ood_avg": {"mean": 50.0},
        ...                                "ood": {"sketch": {"mean": 38.0}}}}}
        >>> compare_to_reference(new, ref, 1.0)
        ["method 'vanilla', set 'sketch': 40.0 -> 38.0 (moved -2.0, tolerance 1)"]
    """
    messages = []
    for key, ref in reference["methods"].items():
        new = results["methods"].get(key)
        if new is None:
            messages.append(f"method {key!r} is missing from the new results")
            continue
        pairs = [("id", ref["id"], new["id"]), ("ood_avg", ref["ood_avg"], new["ood_avg"])]
        pairs += [(name, stat, new["ood"].get(name)) for name, stat in ref["ood"].items()]
        for name, old_stat, new_stat in pairs:
            if new_stat is None:
                messages.append(f"method {key!r}, set {name!r} is missing from the new results")
                continue
            diff = float(new_stat["mean"]) - float(old_stat["mean"])
            if abs(diff) > tolerance:
                messages.append(
                    f"method {key!r}, set {name!r}: {old_stat['mean']:.1f} -> "
                    f"{new_stat['mean']:.1f} (moved {diff:+.1f}, tolerance {tolerance:g})"
                )
    return messages

"""The claims study's analysis, written down before any study run.

The default ``cfmask demo`` replicates training seeds on one draw of the benchmark
(one *data seed*). A new draw moves the paired differences by about as much as the
effects being measured, so a claim is only as good as its spread over draws. The
study repeats the benchmark on ``D`` data seeds with ``S`` paired training seeds
each, and reads every comparison at two levels:

* **per data seed**: the ``S`` paired differences ``variant - reference`` (same
  training seed, same data) and their 95 % t-interval (:func:`cfmask.demo.stats.mean_ci95`);
* **across data seeds** (the headline): the mean of the ``D`` per-data-seed means, with
  the 95 % t-interval computed from those ``D`` means (``D - 1`` degrees of freedom),
  so that the variance between benchmark draws counts;
* **pooled pairs** (shown beside it): all ``D * S`` differences as one sample. It
  ignores the grouping and is narrower whenever draws differ; it is never the
  headline.

The comparisons (:data:`COMPARISONS`), the reading rule (:func:`verdict`), the power
rule (:func:`plan_seeds`), the matched-ID rule (:func:`best_variant`,
:func:`ood_at_id`) and the Fig. 6 rules (:func:`wise_dominance`,
:func:`fig6_reading`) are fixed here; the study only fills them with numbers.
Everything is a pure function of accuracies in percent, except :class:`StudyConfig`,
the design and the choices it holds fixed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cfmask.demo.stats import Interval, mean_ci95, t_quantile_975

__all__ = (
    "BEST_CANDIDATES",
    "COMPARISONS",
    "best_variant",
    "fig6_reading",
    "ood_at_id",
    "HALF_WIDTH_TARGET",
    "Comparison",
    "SeedPlan",
    "StudyConfig",
    "TwoLevelInterval",
    "VarianceComponents",
    "planned_half_width",
    "plan_seeds",
    "two_level_interval",
    "variance_components",
    "verdict",
    "wise_dominance",
)

#: The 95 % half-width (OOD points) the study must reach on CAM object - FD.
HALF_WIDTH_TARGET = 0.25


@dataclass(frozen=True)
class Comparison:
    """One pre-registered paired comparison, ``variant - reference``.

    Attributes:
        name: Display name.
        variant: Method key in results.json (e.g. ``"object-single"``).
        reference: Method key it is compared with.
        claim: The paper's statement that the comparison tests.
    """

    name: str
    variant: str
    reference: str
    claim: str


#: The study's comparisons, fixed before the first study run (Xiao et al., CVPR 2023).
COMPARISONS: tuple[Comparison, ...] = (
    Comparison(
        "CAM object - FD",
        "object-single",
        "fd",
        "Tables 1 and 3: distilling on object-masked counterfactuals beats plain feature "
        "distillation in OOD accuracy",
    ),
    Comparison(
        "context - FD",
        "context-single",
        "fd",
        "Table 3: context masking also improves on plain feature distillation",
    ),
    Comparison(
        "random - FD",
        "random-single",
        "fd",
        "Table 3: random masking improves less than CAM-guided masking",
    ),
    Comparison(
        "exact mask - FD",
        "object-exact-single",
        "fd",
        "the ceiling: object masks from the true segmentation",
    ),
    Comparison(
        "exact mask - CAM object",
        "object-exact-single",
        "object-single",
        "how much of the exact mask's effect the CAM recovers",
    ),
    Comparison(
        "CAM object - random",
        "object-single",
        "random-single",
        "Table 3: masking the object is best (it beats random masks)",
    ),
    Comparison(
        "CAM object - vanilla",
        "object-single",
        "vanilla",
        "Tables 1 and 3: the method is more robust than vanilla fine-tuning",
    ),
    Comparison(
        "CAM object - LP-FT",
        "object-single",
        "lp-ft",
        "Table 3: the method beats LP-FT in OOD accuracy",
    ),
    Comparison(
        "CAM object - uniform soup",
        "object-single",
        "soup",
        "Table 3: the method beats a uniform model soup in OOD accuracy",
    ),
)


@dataclass(frozen=True)
class TwoLevelInterval:
    """A paired comparison read at both levels of the study.

    Attributes:
        across_data_seeds: Mean of the per-data-seed means and its 95 % interval from
            the ``D`` data seeds (the headline).
        pooled_pairs: Mean and 95 % interval of all ``D * S`` differences as one sample.
        per_data_seed: The interval of each data seed's ``S`` differences.
    """

    across_data_seeds: Interval
    pooled_pairs: Interval
    per_data_seed: dict[int, Interval]


def two_level_interval(deltas: Mapping[int, Sequence[float]]) -> TwoLevelInterval:
    """Read paired differences grouped by data seed at both levels.

    Args:
        deltas: ``{data_seed: [difference for each training seed]}``, accuracy points.

    Returns:
        The :class:`TwoLevelInterval`.

    Raises:
        ValueError: If there is no data seed, or a data seed has no difference.

    Example:
        >>> iv = two_level_interval({0: [1.0, 3.0], 1: [2.0, 4.0]})
        >>> iv.across_data_seeds.mean, iv.across_data_seeds.n, iv.pooled_pairs.n
        (2.5, 2, 4)
    """
    if not deltas:
        raise ValueError("two_level_interval needs at least one data seed")
    empty = [seed for seed, values in deltas.items() if len(values) == 0]
    if empty:
        raise ValueError(f"data seeds without any paired difference: {empty}")
    per_seed = {seed: mean_ci95(list(values)) for seed, values in sorted(deltas.items())}
    means = [iv.mean for iv in per_seed.values()]
    pooled = [float(v) for _, values in sorted(deltas.items()) for v in values]
    return TwoLevelInterval(mean_ci95(means), mean_ci95(pooled), per_seed)


def verdict(interval: Interval) -> str:
    """The pre-registered reading of one interval.

    Args:
        interval: A paired difference's 95 % interval.

    Returns:
        ``"supports"`` (interval above 0), ``"contradicts"`` (below 0) or
        ``"unresolved"`` (contains 0, or a single value).

    Example:
        >>> verdict(Interval(0.5, 0.1, 0.9, 4)), verdict(Interval(0.5, -0.1, 1.1, 4))
        ('supports', 'unresolved')
    """
    if not interval.excludes_zero:
        return "unresolved"
    return "supports" if interval.ci95_low > 0 else "contradicts"


@dataclass(frozen=True)
class VarianceComponents:
    """Standard deviations of a paired difference at the two levels of the study.

    Attributes:
        within: Between training seeds on one data seed.
        between: Between the true means of different data seeds.
    """

    within: float
    between: float


def variance_components(deltas: Mapping[int, Sequence[float]]) -> VarianceComponents:
    """Method-of-moments estimate of the two standard deviations (one-way random effects).

    ``within**2`` is the pooled variance of the differences around their data seed's
    mean (``sum_d (S_d - 1)`` degrees of freedom). ``between**2`` is the variance of the
    data-seed means minus the part that training-seed noise explains,
    ``var(means) - within**2 * mean(1 / S_d)``, truncated at 0; with one data seed it
    cannot be estimated and is reported as ``nan``.

    Args:
        deltas: ``{data_seed: [difference for each training seed]}``.

    Returns:
        The :class:`VarianceComponents`.

    Raises:
        ValueError: If no data seed has two or more differences.

    Example:
        >>> vc = variance_components({0: [1.0, 3.0], 1: [2.0, 4.0], 2: [0.0, 2.0]})
        >>> round(vc.within, 4), vc.between
        (1.4142, 0.0)
    """
    groups = [[float(v) for v in values] for values in deltas.values()]
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if dof == 0:
        raise ValueError("variance_components needs a data seed with at least two differences")
    ss = 0.0
    for g in groups:
        m = math.fsum(g) / len(g)
        ss += math.fsum((v - m) ** 2 for v in g)
    within_var = ss / dof
    if len(groups) < 2:
        return VarianceComponents(math.sqrt(within_var), math.nan)
    means = [math.fsum(g) / len(g) for g in groups]
    grand = math.fsum(means) / len(means)
    var_means = math.fsum((m - grand) ** 2 for m in means) / (len(means) - 1)
    mean_inv_s = math.fsum(1.0 / len(g) for g in groups) / len(groups)
    between_var = max(0.0, var_means - within_var * mean_inv_s)
    return VarianceComponents(math.sqrt(within_var), math.sqrt(between_var))


def planned_half_width(components: VarianceComponents, data_seeds: int, train_seeds: int) -> float:
    """Expected 95 % half-width of the across-data-seeds interval of a design.

    ``t_{0.975, D-1} * sqrt(between**2 / D + within**2 / (D * S))``: the variance of a
    mean of ``D`` data-seed means, each of ``S`` training seeds.

    Args:
        components: The two standard deviations (``between`` must not be ``nan``).
        data_seeds: ``D`` (>= 2).
        train_seeds: ``S`` (>= 1).

    Returns:
        The half-width, in accuracy points.

    Raises:
        ValueError: If ``D < 2``, ``S < 1`` or ``between`` is unknown.

    Example:
        >>> round(planned_half_width(VarianceComponents(0.2, 0.0), 4, 2), 4)
        0.225
    """
    if data_seeds < 2 or train_seeds < 1:
        raise ValueError(
            f"a two-level design needs D >= 2 and S >= 1, got D={data_seeds}, S={train_seeds}"
        )
    if math.isnan(components.between):
        raise ValueError(
            "the between-data-seed deviation is unknown (nan): measure it on two or more "
            "data seeds, or state an assumed value"
        )
    var = components.between**2 / data_seeds + components.within**2 / (data_seeds * train_seeds)
    return t_quantile_975(data_seeds - 1) * math.sqrt(var)


@dataclass(frozen=True)
class SeedPlan:
    """The smallest design that reaches the target half-width.

    Attributes:
        data_seeds: ``D``.
        train_seeds: ``S``.
        half_width: Its expected 95 % half-width.
    """

    data_seeds: int
    train_seeds: int
    half_width: float

    @property
    def runs(self) -> int:
        """Training runs per method, ``D * S``."""
        return self.data_seeds * self.train_seeds


def plan_seeds(
    components: VarianceComponents,
    target: float = HALF_WIDTH_TARGET,
    *,
    min_train_seeds: int = 2,
    max_runs: int = 64,
) -> SeedPlan:
    """The design with the fewest runs whose expected half-width is at most ``target``.

    Designs are searched in order of ``D * S``; among designs with equally many runs,
    the one with more data seeds wins (draw variance shrinks only with ``D``).
    ``S >= min_train_seeds`` so that every data seed has its own paired interval.

    Args:
        components: The two standard deviations.
        target: Largest acceptable half-width, in accuracy points.
        min_train_seeds: Smallest ``S``.
        max_runs: Largest ``D * S`` considered.

    Returns:
        The :class:`SeedPlan`.

    Raises:
        ValueError: If no design within ``max_runs`` reaches the target.

    Example:
        >>> plan = plan_seeds(VarianceComponents(0.2, 0.0))
        >>> plan.data_seeds, plan.train_seeds
        (4, 2)
    """
    for runs in range(2 * min_train_seeds, max_runs + 1):
        for d in range(runs // min_train_seeds, 1, -1):
            if runs % d:
                continue
            s = runs // d
            if s < min_train_seeds:
                continue
            hw = planned_half_width(components, d, s)
            if hw <= target:
                return SeedPlan(d, s, hw)
    raise ValueError(
        f"no design of at most {max_runs} runs reaches a half-width of {target:g} with "
        f"within={components.within:.3f}, between={components.between:.3f}"
    )


def wise_dominance(id_deltas: Interval, ood_deltas: Interval) -> str:
    """Fig. 6's rule for one mixing weight: does WiSE of the masking model beat the model?

    The paper observes that interpolating the masking-trained model towards the
    pre-trained one (WiSE-Ours) does not improve on it. With the paired differences
    ``WiSE-Ours(alpha) - Ours`` in ID and OOD accuracy:

    * ``"dominates"``: both intervals lie above 0 (contradicts the paper);
    * ``"does not dominate"``: at least one interval lies below 0 (supports it);
    * ``"unresolved"``: otherwise.

    Args:
        id_deltas: Interval of the ID difference.
        ood_deltas: Interval of the OOD-average difference.

    Returns:
        One of the three readings.

    Example:
        >>> wise_dominance(Interval(-1.0, -1.5, -0.5, 4), Interval(0.5, 0.1, 0.9, 4))
        'does not dominate'
    """
    readings = (verdict(id_deltas), verdict(ood_deltas))
    if readings == ("supports", "supports"):
        return "dominates"
    if "contradicts" in readings:
        return "does not dominate"
    return "unresolved"


#: The masking variants among which :func:`best_variant` picks the one compared with
#: WiSE-FT and KD at matched ID (the exact-mask ceiling is left out: it reads the true
#: segmentation, which the paper's setting does not have).
BEST_CANDIDATES: tuple[str, ...] = ("object-single", "context-single", "random-single")


def best_variant(ood_means: Mapping[str, float]) -> str:
    """The pre-registered "best masking variant": highest mean OOD accuracy.

    The mean is the study's across-data-seeds mean of the OOD average. Ties go to the
    earlier entry of :data:`BEST_CANDIDATES` (object before context before random).
    Picking the winner on the same runs that then compare it with WiSE-FT and KD
    favours it slightly (winner's curse); the pick is reported beside the comparison.

    Args:
        ood_means: Mean OOD accuracy of each method key (must include every candidate).

    Returns:
        The chosen key.

    Raises:
        KeyError: If a candidate is missing.

    Example:
        >>> best_variant({"object-single": 72.8, "context-single": 72.6,
        ...               "random-single": 72.8})
        'object-single'
    """
    missing = [k for k in BEST_CANDIDATES if k not in ood_means]
    if missing:
        raise KeyError(f"best_variant needs the mean OOD accuracy of {missing}")
    best = BEST_CANDIDATES[0]
    for key in BEST_CANDIDATES[1:]:
        if ood_means[key] > ood_means[best]:
            best = key
    return best


def ood_at_id(curve: Sequence[tuple[float, float]], id_acc: float) -> float | None:
    """OOD accuracy of a piecewise-linear ID-OOD curve at a given ID accuracy.

    The curve is a WiSE path, ``(ID, OOD)`` at increasing mixing weights, joined by
    straight segments. Every segment whose ID range contains ``id_acc`` gives an
    interpolated OOD value; the largest is returned (the curve's best OOD at that ID,
    which is the conservative side for a method compared against the curve). Outside
    the curve's ID range the comparison is not made.

    Args:
        curve: ``(id, ood)`` points in path order (at least two).
        id_acc: The ID accuracy to match.

    Returns:
        The OOD accuracy, or ``None`` when ``id_acc`` lies outside every segment.

    Raises:
        ValueError: With fewer than two points.

    Example:
        >>> ood_at_id([(80.0, 76.0), (86.0, 74.0), (90.0, 67.0)], 88.0)
        70.5
        >>> ood_at_id([(80.0, 76.0), (90.0, 67.0)], 91.0) is None
        True
    """
    if len(curve) < 2:
        raise ValueError("ood_at_id needs a curve of at least two points")
    found: list[float] = []
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        lo, hi = min(x0, x1), max(x0, x1)
        if not lo <= id_acc <= hi:
            continue
        if x1 == x0:
            found.append(max(y0, y1))
        else:
            found.append(y0 + (y1 - y0) * (id_acc - x0) / (x1 - x0))
    return max(found) if found else None


def fig6_reading(per_alpha: Mapping[float, str]) -> str:
    """The paper's Fig. 6 observation as a check over every mixing weight.

    The paper finds that WiSE-Ours does not improve on the masking-trained model. With
    one :func:`wise_dominance` reading per interior ``alpha``:

    * ``"supports"``: no alpha dominates and at least one "does not dominate";
    * ``"contradicts"``: some alpha dominates;
    * ``"unresolved"``: every alpha is unresolved.

    Args:
        per_alpha: ``{alpha: wise_dominance reading}``.

    Returns:
        One of the three readings.

    Raises:
        ValueError: Without any alpha.

    Example:
        >>> fig6_reading({0.25: "unresolved", 0.5: "does not dominate"})
        'supports'
    """
    if not per_alpha:
        raise ValueError("fig6_reading needs at least one mixing weight")
    readings = set(per_alpha.values())
    if "dominates" in readings:
        return "contradicts"
    if "does not dominate" in readings:
        return "supports"
    return "unresolved"


@dataclass(frozen=True)
class StudyConfig:
    """The study's design and every choice it holds fixed.

    The benchmark of every draw is the ``study`` profile's: the default run's training
    split and recipe, with 1 000 images per test set (the default run has 2 000) to fit
    the study in about an hour on two cores; the extra evaluation noise is part of the
    training-seed variance the study measures. The method choices are those the
    default ``cfmask demo`` selected on data seed 0
    (README: beta = 1 by the written rule; object and context thresholds 0.5 and random
    rate 0.75 by ID validation). The study does not select again on its draws, and its
    data seeds leave out 0, the draw those choices were made on.

    Attributes:
        profile: Name of the :data:`~cfmask.demo.runner.PROFILES` entry that sets the
            benchmark sizes and the fine-tuning recipe.
        data_seeds: The benchmark draws ``d``.
        train_seeds: Training seeds per draw, ``0 .. train_seeds - 1``.
        beta: Feature distillation weight of FD and of every masking method.
        object_threshold: CAM threshold of the object masks.
        context_threshold: CAM threshold of the context masks.
        random_ratio: Rate of the random masks.
        exact_min_coverage: Coverage from which the exact masks mask a patch.
        kd_weight: Weight of KD from the pre-trained model.
        kd_temperature: Temperature of that KD.
        wise_alphas: Interior mixing weights of every WiSE curve (the ends are the
            pre-trained and the fine-tuned model).
        soup_lr_scales: Learning-rate factors of the uniform soup's ingredients
            (vanilla fine-tuning; the factor 1 run is the vanilla row itself).
        lp_lr_scale: Learning-rate factor of LP-FT's linear probe.
        wise_kd_alpha: Mixing weight of the WiSE-FT model that WiSE-KD distils from.
        wise_kd_weight: WiSE-KD's ``gamma`` (1 in the paper).
        wise_kd_temperature: WiSE-KD's temperature (10 in the paper).
        workers: Worker processes (wall time only).
    """

    profile: str = "study"
    data_seeds: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    train_seeds: int = 2
    beta: float = 1.0
    object_threshold: float = 0.5
    context_threshold: float = 0.5
    random_ratio: float = 0.75
    exact_min_coverage: float = 0.5
    kd_weight: float = 1.0
    kd_temperature: float = 4.0
    wise_alphas: tuple[float, ...] = (0.25, 0.5, 0.75)
    soup_lr_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    lp_lr_scale: float = 10.0
    wise_kd_alpha: float = 0.5
    wise_kd_weight: float = 1.0
    wise_kd_temperature: float = 10.0
    workers: int = 2

    def __post_init__(self) -> None:
        if len(self.data_seeds) < 2 or len(set(self.data_seeds)) != len(self.data_seeds):
            raise ValueError(
                f"the study needs two or more distinct data seeds, got {self.data_seeds}"
            )
        if self.train_seeds < 2:
            raise ValueError(
                f"the study needs two or more training seeds per data seed (each draw has "
                f"its own paired interval), got {self.train_seeds}"
            )
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if 1.0 not in self.soup_lr_scales or len(self.soup_lr_scales) < 2:
            raise ValueError(
                "soup_lr_scales must contain 1 (the vanilla run) and at least one other "
                f"factor, got {self.soup_lr_scales}"
            )
        if self.wise_kd_alpha not in self.wise_alphas:
            raise ValueError(
                f"wise_kd_alpha {self.wise_kd_alpha} must be one of wise_alphas {self.wise_alphas}"
            )

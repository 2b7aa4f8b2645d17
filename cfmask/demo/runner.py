"""The experiment runner of the demo: methods built from library components, run as jobs.

Every fine-tuning run goes through the library's own
:class:`~cfmask.training.finetuner.CounterfactualFineTuner` and a Lightning ``Trainer``; a
method is nothing but the components handed to it (:class:`Method`). WiSE-FT
mixtures use :func:`cfmask.backbones.state_dicts.interpolate_state_dicts`.

Each run is a self-contained :class:`Job` executed at a fixed torch thread count
(``FineTuneConfig.threads``, 1 by default) with deterministic algorithms and a fixed
seed, so its numbers depend neither on the machine's core count nor on which worker
runs it. :class:`JobRunner` runs jobs in the current process or in a pool of worker
processes (``Profile.workers``); the pool only changes the wall time.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cfmask.backbones.state_dicts import interpolate_state_dicts
from cfmask.data.relevance_cache import IndexedDataset
from cfmask.demo.data import Benchmark, BenchmarkConfig, TensorImageDataset
from cfmask.demo.pretrained import SHIPPED_WEIGHTS, verify_pretrained
from cfmask.demo.teacher import ModelConfig, PretrainConfig, accuracy, build_backbone, pinned_torch
from cfmask.losses import DistillationLoss, FeatureDistillationLoss, LogitDistillationLoss
from cfmask.masking import (
    ContextMasker,
    Masker,
    MultiImageRefiller,
    ObjectMasker,
    RandomMasker,
    Refiller,
    SegmentationMasker,
    SingleImageRefiller,
)
from cfmask.relevance import AttentionGradRelevance, RelevanceMap
from cfmask.training.callbacks import MaskQualityMonitor
from cfmask.training.finetuner import CounterfactualFineTuner

__all__ = (
    "PROFILES",
    "FineTuneConfig",
    "Job",
    "JobResult",
    "JobRunner",
    "MaskFractionMeter",
    "Method",
    "Profile",
    "RunContext",
    "cached_teacher_object_method",
    "exact_object_method",
    "fd_method",
    "kd_method",
    "linear_probe_method",
    "lp_ft_method",
    "masking_method",
    "soup_member_method",
    "vanilla_method",
    "weights_for_profile",
    "wise_kd_method",
)


@dataclass(frozen=True)
class FineTuneConfig:
    """Fine-tuning recipe shared by every method, and the grids of every choice.

    Attributes:
        steps: Optimisation steps per run.
        batch_size: Images per step.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps of the warm-up + cosine schedule.
        threads: Torch threads of every run (fixed, so figures do not depend on the
            machine's core count).
        betas: The beta grid of :data:`cfmask.demo.stats.BETA_RULE`.
        beta_tolerance: ID validation points FD may lose to vanilla under the rule.
        object_thresholds: CAM thresholds tried for object masks (chosen on ID val).
        context_thresholds: CAM thresholds tried for context masks (chosen on ID val).
        random_ratios: Masking rates tried for random masks (chosen on ID val).
        exact_min_coverage: Patch coverage from which the exact-mask row masks a patch
            (:class:`~cfmask.masking.SegmentationMasker`); fixed, not selected.
        kd_weight: Weight ``gamma`` of the logit distillation (KD).
        kd_temperature: Temperature of the logit distillation.
        wise_alphas: Mixing coefficients of the WiSE-FT curve.
    """

    steps: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 4
    threads: int = 1
    betas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    beta_tolerance: float = 2.0
    object_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)
    context_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)
    random_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    exact_min_coverage: float = 0.5
    kd_weight: float = 1.0
    kd_temperature: float = 4.0
    wise_alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Profile:
    """Everything that sets the size of a demo run.

    Attributes:
        name: Profile name.
        bench: Benchmark sizes (and the data seed).
        model: Architecture (must match the pre-trained weights).
        pretrain: Recipe of the pre-trained model (used by ``--pretrain``).
        finetune: Fine-tuning recipe and selection grids.
        seeds: Number of paired training seeds.
        select: Whether beta, thresholds and rates are chosen on ID validation (else
            the middle of each grid is used, as ``--quick`` does).
        workers: Worker processes (wall time only; every run is pinned).
        mask_thresholds: Thresholds of the Table 2-like mask measurement.
        mask_every: Measure the masks on every ``mask_every``-th training batch.
    """

    name: str
    bench: BenchmarkConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    seeds: int = 3
    select: bool = True
    workers: int = 2
    mask_thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    mask_every: int = 4


#: The profiles by name, ``default`` (the benchmark), ``quick`` (a 3-minute look) and
#: ``study`` (the claims study's draws, with the default recipe and half-size test sets).
PROFILES: dict[str, Profile] = {
    "default": Profile(name="default", bench=BenchmarkConfig(n_test=2000)),
    "quick": Profile(
        name="quick",
        bench=BenchmarkConfig(n_finetune=4000, n_val=500, n_test=1000),
        finetune=FineTuneConfig(betas=(0.3, 1.0), wise_alphas=(0.0, 0.5, 1.0)),
        seeds=1,
        select=False,
        mask_every=2,
    ),
    "study": Profile(name="study", bench=BenchmarkConfig(n_val=500, n_test=1000), seeds=2),
}


def weights_for_profile(
    profile: Profile, weights: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Check pre-trained weights against a profile and describe where they come from.

    Args:
        profile: The run's profile (architecture and pre-training pool).
        weights: A ``.safetensors`` file with its ``.json`` recipe; ``None`` takes the
            shipped file.

    Returns:
        The weights file and ``{"source", "file", "sha256", "recipe"}``.

    Raises:
        ValueError: If the file was trained for another architecture or pool (its
            hash and recipe are checked by
            :func:`~cfmask.demo.pretrained.verify_pretrained`).
    """
    path = weights if weights is not None else SHIPPED_WEIGHTS
    rec = verify_pretrained(path)
    if rec.model != profile.model:
        raise ValueError(
            f"{path} was trained for {rec.model}, but the profile uses {profile.model}"
        )
    if rec.pretrain.pool != profile.pretrain.pool:
        raise ValueError(
            f"{path} was trained on pool {rec.pretrain.pool}; the benchmark excludes the "
            f"garments of {profile.pretrain.pool}. Use weights of the profile's pool."
        )
    return path, {
        "source": "shipped" if weights is None else "--weights",
        "file": str(path),
        "sha256": rec.sha256,
        "recipe": dataclasses.asdict(rec.pretrain),
    }


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: the library components handed to the fine-tuner.

    Attributes:
        key: Identifier used in results.json.
        label: Display name.
        distillation: Distillation terms (empty for vanilla fine-tuning).
        masker: Masker, or ``None`` for ``x_cf = x``.
        refiller: Refiller (with a masker).
        relevance: Relevance map for maskers that need one.
        group: ``"baseline"`` or ``"masking"``.
        relevance_source: The fine-tuner's ``relevance_source``: ``"student"`` (the
            reference's map of the current model) or ``"cached_teacher"`` (the frozen
            pre-trained model's map, computed once per training set).
        lr_scale: Multiplies the recipe's learning rate (``FineTuneConfig.lr``); the
            uniform soup's members differ in it.
        trainable: The fine-tuner's ``trainable``: ``"all"``, or ``"head"`` for the
            linear probe of LP-FT.
    """

    key: str
    label: str
    distillation: tuple[DistillationLoss, ...] = ()
    masker: Masker | None = None
    refiller: Refiller | None = None
    relevance: RelevanceMap | None = None
    group: str = "baseline"
    relevance_source: str = "student"
    lr_scale: float = 1.0
    trainable: Literal["all", "head"] = "all"

    def components(self) -> dict[str, Any]:
        """Fresh copies of the components, as keyword arguments of the fine-tuner."""
        return {
            "masker": copy.deepcopy(self.masker),
            "refiller": copy.deepcopy(self.refiller),
            "relevance": copy.deepcopy(self.relevance),
            "distillation": [copy.deepcopy(t) for t in self.distillation],
        }

    def config(self) -> dict[str, Any]:
        """The components' ``{"class_path", "init_args"}`` configs (for results.json)."""
        out: dict[str, Any] = {
            "masker": None if self.masker is None else self.masker.config(),
            "refiller": None if self.refiller is None else self.refiller.config(),
            "relevance": None if self.relevance is None else self.relevance.config(),
            "distillation": [t.config() for t in self.distillation],
        }
        if self.relevance_source != "student":
            out["relevance_source"] = self.relevance_source
        if self.lr_scale != 1.0:
            out["lr_scale"] = self.lr_scale
        if self.trainable != "all":
            out["trainable"] = self.trainable
        return out


def vanilla_method() -> Method:
    """Vanilla fine-tuning: cross-entropy only."""
    return Method("vanilla", "Vanilla FT")


def fd_method(beta: float) -> Method:
    """Feature distillation without masks (``x_cf = x``), the paper's "no masking" row."""
    return Method(
        "fd", "FD (no mask)", distillation=(FeatureDistillationLoss(weight=beta, inputs="clean"),)
    )


def kd_method(weight: float, temperature: float) -> Method:
    """Logit distillation from the pre-trained model on clean images (KD)."""
    return Method(
        "kd", "KD", distillation=(LogitDistillationLoss(weight=weight, temperature=temperature),)
    )


def masking_method(
    key: str, label: str, masker: Masker, beta: float, refiller: Refiller | None = None
) -> Method:
    """Counterfactual fine-tuning: feature distillation on masked-and-refilled images.

    Args:
        key: Identifier.
        label: Display name.
        masker: The masker (e.g. ``ObjectMasker(0.4)``).
        beta: Weight of the feature distillation.
        refiller: Defaults to :class:`~cfmask.masking.SingleImageRefiller`.

    Returns:
        The method; relevance is :class:`~cfmask.relevance.AttentionGradRelevance` of
        the student when the masker needs one.
    """
    return Method(
        key,
        label,
        distillation=(FeatureDistillationLoss(weight=beta, inputs="counterfactual"),),
        masker=masker,
        refiller=refiller if refiller is not None else SingleImageRefiller(),
        relevance=AttentionGradRelevance() if masker.requires_relevance else None,
        group="masking",
    )


def standard_masking_methods(
    beta: float, object_t: float, context_t: float, random_p: float, *, multi: bool = False
) -> list[Method]:
    """The CAM object, CAM context and random maskers with the single-image fill.

    Args:
        beta: Feature distillation weight.
        object_t: Object-mask CAM threshold.
        context_t: Context-mask CAM threshold.
        random_p: Random masking rate.
        multi: Also add the multi-image fill of each masker.

    Returns:
        The methods, object first.
    """
    fills: list[tuple[str, Callable[[], Refiller]]] = [("single", SingleImageRefiller)]
    if multi:
        fills.append(("multi", MultiImageRefiller))
    out = []
    for name, masker, what in (
        ("object", ObjectMasker(threshold=object_t), f"t={object_t:g}"),
        ("context", ContextMasker(threshold=context_t), f"t={context_t:g}"),
        ("random", RandomMasker(ratio=random_p), f"p={random_p:g}"),
    ):
        for fill, make in fills:
            label = f"{name}/{fill} {what}"
            out.append(masking_method(f"{name}-{fill}", label, copy.deepcopy(masker), beta, make()))
    return out


def exact_object_method(beta: float, min_coverage: float) -> Method:
    """Object masking from the exact garment masks, with the single-image fill.

    The ceiling of CAM object masking on this benchmark: the same objective, but the
    masked patches are those the true object covers (at least ``min_coverage`` of
    their pixels), read from the batch's masks by
    :class:`~cfmask.masking.SegmentationMasker`.

    Args:
        beta: Feature distillation weight (the CAM rows' beta).
        min_coverage: Object coverage from which a patch is masked.

    Returns:
        The method, key ``"object-exact-single"``.
    """
    return masking_method(
        "object-exact-single",
        f"object (exact mask)/single c={min_coverage:g}",
        SegmentationMasker(min_coverage=min_coverage),
        beta,
    )


def cached_teacher_object_method(beta: float, threshold: float) -> Method:
    """CAM object masking with the frozen pre-trained model's map, cached per training set.

    The same masker, threshold, fill and beta as the CAM object row, but the map comes
    from the pre-trained model (``relevance_source="cached_teacher"``), computed once
    over the training set, instead of from the current student every step (the
    reference). Its paired difference to the CAM object row is what that saving costs.

    Args:
        beta: Feature distillation weight (the CAM rows' beta).
        threshold: Object-mask threshold (the CAM object row's chosen one).

    Returns:
        The method, key ``"object-teacher-single"``.
    """
    method = masking_method(
        "object-teacher-single",
        f"object (cached teacher map)/single t={threshold:g}",
        ObjectMasker(threshold=threshold),
        beta,
    )
    return dataclasses.replace(method, relevance_source="cached_teacher")


def linear_probe_method(lr_scale: float) -> Method:
    """The first stage of LP-FT: the pre-trained head trained alone, encoder frozen.

    Args:
        lr_scale: Learning rate of the probe relative to the recipe's (the library's
            recipes probe at a higher rate than they fine-tune).

    Returns:
        The method, key ``"linear-probe"``.
    """
    return Method("linear-probe", "Linear probe", lr_scale=lr_scale, trainable="head")


def lp_ft_method() -> Method:
    """The second stage of LP-FT: vanilla fine-tuning started from the linear probe.

    The start point is the probe's state, given to the :class:`Job` as
    ``init_state``; the recipe is vanilla fine-tuning's.

    Returns:
        The method, key ``"lp-ft"``.
    """
    return Method("lp-ft", "LP-FT")


def soup_member_method(lr_scale: float) -> Method:
    """Vanilla fine-tuning at a scaled learning rate: one ingredient of a uniform soup.

    Args:
        lr_scale: Factor on the recipe's learning rate.

    Returns:
        The method, key ``"vanilla-lr<scale>"`` (``"vanilla"`` itself at 1).
    """
    if lr_scale == 1.0:
        return vanilla_method()
    return Method(f"vanilla-lr{lr_scale:g}", f"Vanilla FT lr x{lr_scale:g}", lr_scale=lr_scale)


def wise_kd_method(
    beta: float, threshold: float, teacher: str, weight: float, temperature: float
) -> Method:
    """WiSE-KD (the paper's Fig. 6): CAM object masking plus KD from a WiSE-FT model.

    The masking objective of :func:`masking_method` (feature distillation from the
    pre-trained model on object-masked counterfactuals) with a logit distillation term
    on clean images whose teacher is a WiSE-FT mixture, read from a file.

    Args:
        beta: Feature distillation weight.
        threshold: Object-mask CAM threshold.
        teacher: Path of the WiSE-FT model's state dict (``torch.save``).
        weight: Weight ``gamma`` of the logit distillation (1 in the paper).
        temperature: Its temperature (10 in the paper).

    Returns:
        The method, key ``"wise-kd"``.
    """
    base = masking_method("wise-kd", "WiSE-KD", ObjectMasker(threshold=threshold), beta)
    kd = LogitDistillationLoss(weight=weight, temperature=temperature, teacher=teacher)
    return dataclasses.replace(base, distillation=(*base.distillation, kd))


class _Progress(pl.Callback):
    """Advance a progress callback after every training step."""

    def __init__(self, advance: Callable[[], None]) -> None:
        self._advance = advance

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._advance()


class MaskFractionMeter(pl.Callback):
    """Average the fraction of masked patches over training.

    Reads the ``(B, N)`` patch mask that
    :meth:`~cfmask.training.finetuner.CounterfactualFineTuner.training_step` returns to the
    callbacks (``outputs["mask"]``, ``None`` when no mask was drawn).

    Attributes:
        values: One fraction per step (empty for methods without a mask).
    """

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Record this step's masked fraction, if the step drew a mask."""
        mask = outputs.get("mask") if isinstance(outputs, Mapping) else None
        if mask is not None:
            self.values.append(float(mask.float().mean()))

    @property
    def mean(self) -> float | None:
        """Mean fraction over the recorded steps, or ``None`` without any."""
        return sum(self.values) / len(self.values) if self.values else None


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    import logging
    import warnings

    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


#: ``{"val": float, "id": float, "ood": {set: float}}`` plus extras, for one model.
SeedResult = dict[str, Any]


@dataclass(frozen=True)
class Job:
    """One unit of work: a fine-tuning run, or the evaluation of WiSE-FT mixtures.

    Attributes:
        tag: Free-form identifier the caller uses to file the result.
        seed: Training seed (initialisation order, data order, masks, donors).
        method: The method to fine-tune with (``None``: evaluate ``state`` instead).
        keep_state: Return the fine-tuned state dict.
        wise_alphas: Evaluate these WiSE-FT mixtures of the fine-tuned model (or of
            ``state``) with the pre-trained weights.
        state: A fine-tuned backbone state dict to evaluate on every split (and to mix
            with ``wise_alphas``) instead of training; needs ``method=None``.
        mask_quality: Measure CAM object masks against the exact masks.
        val_only: Evaluate on the ID validation split only (selection runs).
        evaluate: Evaluate the fine-tuned model (``False`` for models that only feed
            another job, such as a soup's ingredients; ``result`` then holds only
            ``seconds``).
        init_state: Backbone state dict to start fine-tuning from instead of the
            pre-trained weights (LP-FT's second stage starts from the linear probe).
            A method with a frozen initial teacher would copy this state as its
            teacher; the study only uses it without distillation.
    """

    tag: str
    seed: int
    method: Method | None = None
    keep_state: bool = False
    wise_alphas: tuple[float, ...] = ()
    state: Mapping[str, Tensor] | None = None
    mask_quality: bool = False
    val_only: bool = False
    evaluate: bool = True
    init_state: Mapping[str, Tensor] | None = None


@dataclass
class JobResult:
    """What a :class:`Job` returns.

    Attributes:
        tag: The job's tag.
        result: Accuracies of the fine-tuned model (``None`` for a WiSE-only job),
            with ``seconds`` and, for masked methods, ``mask_fraction``.
        wise: One result per WiSE-FT alpha, each with an ``alpha`` entry.
        state: The fine-tuned state dict when ``keep_state``.
        mask_quality: Rows of
            :meth:`~cfmask.training.callbacks.MaskQualityMonitor.rows` when requested.
    """

    tag: str
    result: SeedResult | None
    wise: list[SeedResult] = field(default_factory=list)
    state: dict[str, Tensor] | None = None
    mask_quality: list[dict[str, float]] | None = None


class RunContext:
    """What every job needs: profile, data and the pre-trained weights.

    Runs jobs in the current process (:meth:`run`); :class:`JobRunner` holds one per
    worker process. The claims study (:mod:`cfmask.demo.study_run`) holds one per data
    seed in each of its worker processes.

    Args:
        profile: Sizes and recipes.
        bench: The benchmark data.
        weights: The pre-trained weights file.
    """

    def __init__(self, profile: Profile, bench: Benchmark, weights: Path) -> None:
        self.profile = profile
        self.bench = bench
        self.weights = weights
        self._zero_shot: dict[str, Tensor] | None = None
        # Teacher relevance maps of cached_teacher runs, shared by this process's jobs
        # (keyed by weights and data, so a map is never reused for other ones).
        self._relevance_cache: tempfile.TemporaryDirectory[str] | None = None

    def relevance_cache_dir(self) -> str:
        """A folder, kept while this context lives, for the cached teacher maps."""
        if self._relevance_cache is None:
            self._relevance_cache = tempfile.TemporaryDirectory(prefix="cfmask-demo-relevance-")
        return self._relevance_cache.name

    def backbone(self) -> Any:
        """A fresh copy of the pre-trained classifier."""
        return build_backbone(self.profile.model, pretrained=str(self.weights))

    def zero_shot_state(self) -> dict[str, Tensor]:
        """The pre-trained state dict (``theta_0`` of the WiSE mixtures), built once."""
        if self._zero_shot is None:
            self._zero_shot = {k: v.clone() for k, v in self.backbone().state_dict().items()}
        return self._zero_shot

    def evaluate(self, backbone: torch.nn.Module, val_only: bool = False) -> SeedResult:
        """Accuracy (%) on ID validation and, unless ``val_only``, every test set."""
        tests = self.bench.tests
        out: SeedResult = {"val": accuracy(backbone, self.bench.val)}
        if not val_only:
            out["id"] = accuracy(backbone, tests["id"])
            out["ood"] = {k: accuracy(backbone, v) for k, v in tests.items() if k != "id"}
        return out

    def fine_tune(
        self,
        method: Method,
        seed: int,
        callbacks: Sequence[pl.Callback],
        init_state: Mapping[str, Tensor] | None = None,
    ) -> CounterfactualFineTuner:
        """Fine-tune with ``method`` on the training split at ``seed``; return the module.

        ``init_state`` replaces the pre-trained start point (LP-FT's second stage).
        """
        ft = self.profile.finetune
        pl.seed_everything(seed, workers=True, verbose=False)
        backbone = self.backbone()
        if init_state is not None:
            backbone.load_state_dict(dict(init_state))
        cached = method.relevance_source == "cached_teacher"
        extra: dict[str, Any] = {}
        if method.relevance_source != "student":
            extra["relevance_source"] = method.relevance_source
        if cached:
            extra["relevance_cache_dir"] = self.relevance_cache_dir()
        model = CounterfactualFineTuner(
            backbone,
            lr=ft.lr * method.lr_scale,
            trainable=method.trainable,
            weight_decay=ft.weight_decay,
            schedule="warmup_cosine",
            warmup_steps=ft.warmup_steps,
            **method.components(),
            **extra,
        )
        train_set: Dataset[Any] = TensorImageDataset(self.bench.train, with_masks=True)
        loader = DataLoader(
            IndexedDataset(train_set) if cached else train_set,
            batch_size=ft.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=0,
        )
        with _quiet_lightning():
            trainer = pl.Trainer(
                max_steps=ft.steps,
                max_epochs=-1,
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                callbacks=list(callbacks),
                deterministic=True,
            )
            trainer.fit(model, train_dataloaders=loader)
        return model

    def run(self, job: Job, advance: Callable[[], None] | None = None) -> JobResult:
        """Run one job at the profile's pinned thread count.

        Args:
            job: The job.
            advance: Called after every training step (progress bars).

        Returns:
            Its :class:`JobResult`.
        """
        with pinned_torch(self.profile.finetune.threads):
            return self._run(job, advance)

    def _run(self, job: Job, advance: Callable[[], None] | None) -> JobResult:
        t0 = time.perf_counter()
        out = JobResult(tag=job.tag, result=None)
        state: Mapping[str, Tensor] | None = job.state
        if job.method is None and state is not None:
            model_s = self.backbone()
            model_s.load_state_dict(dict(state))
            out.result = self.evaluate(model_s)
        if job.method is not None:
            fraction = MaskFractionMeter()
            cbs: list[pl.Callback] = [fraction]
            quality = None
            if job.mask_quality:
                quality = MaskQualityMonitor(
                    self.profile.mask_thresholds, every_n_batches=self.profile.mask_every
                )
                cbs.append(quality)
            if advance is not None:
                cbs.append(_Progress(advance))
            model = self.fine_tune(job.method, job.seed, cbs, job.init_state)
            student = model.student.cpu()
            res = self.evaluate(student, job.val_only) if job.evaluate else {}
            if fraction.mean is not None:
                res["mask_fraction"] = round(fraction.mean, 4)
            out.result = res
            if quality is not None:
                out.mask_quality = quality.rows()
            state = {k: v.detach().clone() for k, v in student.state_dict().items()}
            if job.keep_state:
                out.state = dict(state)
        if job.wise_alphas:
            if state is None:
                raise ValueError("a WiSE-FT job needs a method or a state")
            for alpha in job.wise_alphas:
                model_b = self.backbone()
                model_b.load_state_dict(
                    interpolate_state_dicts(self.zero_shot_state(), state, alpha)
                )
                res = self.evaluate(model_b)
                res["alpha"] = alpha
                out.wise.append(res)
        seconds = round(time.perf_counter() - t0, 1)
        if out.result is not None:
            out.result["seconds"] = seconds
        return out


_WORKER: RunContext | None = None


def _init_worker(profile: Profile, bench: Benchmark, weights: Path) -> None:
    global _WORKER
    import warnings

    warnings.filterwarnings("ignore")
    _WORKER = RunContext(profile, bench, weights)


def _run_in_worker(job: Job) -> JobResult:
    if _WORKER is None:  # pragma: no cover - the initializer always ran
        raise RuntimeError("worker not initialised")
    return _WORKER.run(job)


class JobRunner:
    """Run :class:`Job` lists in this process or in worker processes.

    Args:
        profile: Sizes and recipes (``profile.workers`` processes; 1 = in-process).
        bench: The benchmark data.
        weights: The pre-trained weights file.
    """

    def __init__(self, profile: Profile, bench: Benchmark, weights: Path) -> None:
        self.context = RunContext(profile, bench, weights)
        self.workers = max(1, profile.workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> JobRunner:
        if self.workers > 1:
            ctx = self.context
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(ctx.profile, ctx.bench, ctx.weights),
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def evaluate_zero_shot(self) -> SeedResult:
        """Accuracies of the pre-trained model (at the pinned thread count)."""
        ctx = self.context
        with pinned_torch(ctx.profile.finetune.threads):
            return ctx.evaluate(ctx.backbone())

    def run(
        self, jobs: Sequence[Job], on_done: Callable[[Job, JobResult], None] | None = None
    ) -> dict[str, JobResult]:
        """Run every job and return the results by tag.

        Args:
            jobs: The jobs (tags must be unique).
            on_done: Called as each job finishes.

        Returns:
            Results by tag.

        Raises:
            ValueError: On duplicate tags.
        """
        tags = [j.tag for j in jobs]
        if len(set(tags)) != len(tags):
            raise ValueError(f"duplicate job tags: {tags}")
        out: dict[str, JobResult] = {}
        if self._pool is None:
            for job in jobs:
                out[job.tag] = self.context.run(job)
                if on_done is not None:
                    on_done(job, out[job.tag])
            return out
        futures: dict[Future[JobResult], Job] = {
            self._pool.submit(_run_in_worker, job): job for job in jobs
        }
        for fut in as_completed(futures):
            job = futures[fut]
            out[job.tag] = fut.result()
            if on_done is not None:
                on_done(job, out[job.tag])
        return out

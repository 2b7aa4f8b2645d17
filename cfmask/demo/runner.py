"""The experiment runner of the demo: every method on the same data and seeds.

Every fine-tuning run goes through the library's own
:class:`~cfmask.finetuner.CounterfactualFineTuner` and a Lightning ``Trainer``;
only the components differ between methods. WiSE-FT curves use
:func:`cfmask.weights.interpolate_state_dicts`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from cfmask.demo.data import Benchmark, BenchmarkConfig, ImageSet, TensorImageDataset
from cfmask.demo.teacher import ModelConfig, PretrainConfig, accuracy, build_backbone
from cfmask.finetuner import CounterfactualFineTuner
from cfmask.functional.patches import patch_mask_to_pixels
from cfmask.losses import DistillationLoss, FeatureDistillationLoss, LogitDistillationLoss
from cfmask.masking import (
    ContextMasker,
    Masker,
    MultiImageRefiller,
    ObjectMasker,
    RandomMasker,
    Refiller,
    SingleImageRefiller,
)
from cfmask.relevance import AttentionGradRelevance
from cfmask.weights import interpolate_state_dicts

__all__ = (
    "PROFILES",
    "FineTuneConfig",
    "MaskQualityMeter",
    "MethodSpec",
    "Profile",
    "Runner",
    "method_specs",
)


@dataclass(frozen=True)
class FineTuneConfig:
    """Fine-tuning recipe shared by every method.

    Attributes:
        steps: Optimisation steps per run.
        batch_size: Images per step.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps of the warm-up + cosine schedule.
        object_threshold: CAM threshold of object masking.
        context_threshold: CAM threshold of context masking.
        random_ratio: Masking probability of random masking.
        kd_weight: Weight ``gamma`` of the logit distillation (KD, WiSE-KD).
        kd_temperature: Temperature of the logit distillation.
        betas: Values of ``beta`` tried on the ID validation split (object + single fill).
        wise_alphas: Mixing coefficients of the WiSE-FT and WiSE-Ours curves.
    """

    steps: int = 80
    batch_size: int = 64
    lr: float = 8e-4
    weight_decay: float = 0.1
    warmup_steps: int = 8
    object_threshold: float = 0.4
    context_threshold: float = 0.4
    random_ratio: float = 0.5
    kd_weight: float = 1.0
    kd_temperature: float = 4.0
    betas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    wise_alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Profile:
    """Everything that sets the size of a demo run.

    Attributes:
        name: Profile name.
        bench: Benchmark sizes.
        model: Architecture.
        pretrain: Teacher recipe.
        finetune: Fine-tuning recipe.
        seeds: Number of training seeds.
        mask_thresholds: Thresholds of the Table 2-like mask measurement.
        mask_every: Measure the masks on every ``mask_every``-th training batch.
    """

    name: str
    bench: BenchmarkConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    seeds: int = 2
    mask_thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    mask_every: int = 4


PROFILES: dict[str, Profile] = {
    "default": Profile(name="default", bench=BenchmarkConfig(n_test=500)),
    "quick": Profile(
        name="quick",
        bench=BenchmarkConfig(n_pretrain=4000, n_finetune=1500, n_val=300, n_test=250),
        pretrain=PretrainConfig(epochs=4),
        finetune=FineTuneConfig(
            steps=30, lr=1e-3, warmup_steps=3, betas=(0.3, 1.0), wise_alphas=(0.0, 0.5, 1.0)
        ),
        seeds=1,
        mask_every=2,
    ),
}


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning method of the comparison.

    Attributes:
        key: Identifier used in results.json.
        label: Display name.
        masker: ``"object"``, ``"context"``, ``"random"`` or ``None`` (no masking).
        refill: ``"single"`` or ``"multi"`` (ignored without a masker).
        feature: ``"counterfactual"``, ``"clean"`` or ``None``: the feature distillation term.
        kd: ``None``, ``"zero-shot"`` (KD from the pre-trained model) or ``"wise"``
            (KD from the WiSE-FT model at alpha 0.5, i.e. WiSE-KD).
        group: ``"baseline"`` or ``"ours"``.
    """

    key: str
    label: str
    masker: str | None = None
    refill: str = "single"
    feature: str | None = None
    kd: str | None = None
    group: str = "baseline"


def method_specs() -> list[MethodSpec]:
    """Return the fine-tuned methods, in table order (zero-shot and WiSE-FT are added apart).

    Returns:
        The method list.
    """
    specs = [
        MethodSpec("vanilla", "Vanilla FT"),
        MethodSpec("fd", "FD (no mask)", feature="clean"),
        MethodSpec("kd", "KD", kd="zero-shot"),
    ]
    for masker in ("object", "context", "random"):
        for refill in ("single", "multi"):
            specs.append(
                MethodSpec(
                    f"ours-{masker}-{refill}",
                    f"Ours {masker}/{refill}",
                    masker=masker,
                    refill=refill,
                    feature="counterfactual",
                    group="ours",
                )
            )
    specs.append(
        MethodSpec(
            "wise-kd",
            "WiSE-KD",
            masker="object",
            refill="single",
            feature="counterfactual",
            kd="wise",
            group="ours",
        )
    )
    return specs


class _StepProgress(pl.Callback):
    """Advance a progress-bar task after every training step."""

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


class MaskQualityMeter(pl.Callback):
    """Measure CAM-based object masks against the exact garment masks during training.

    On every ``every``-th training batch, before the step, the callback computes the
    relevance map of the current student exactly as the fine-tuner does, thresholds
    it with :class:`~cfmask.masking.ObjectMasker` at each threshold, expands the patch
    masks to pixels and compares them with the true garment masks (found by matching
    the batch's images against the training set). Rates are averaged per image, as
    in the paper's Table 2.

    Args:
        train: The fine-tuning training set (with its exact object masks).
        thresholds: CAM thresholds to measure.
        every: Measurement period in batches.
    """

    def __init__(self, train: ImageSet, thresholds: Sequence[float], every: int) -> None:
        self.thresholds = tuple(thresholds)
        self.every = max(1, every)
        self.masks = train.object_masks
        gen = torch.Generator().manual_seed(1234)
        self._w = torch.randn(train.images[0].numel(), generator=gen, dtype=torch.float64)
        keys = train.float_images().flatten(1).double() @ self._w
        self._keys, self._order = keys.sort()
        self.sums = {t: [0.0, 0.0, 0.0] for t in self.thresholds}
        self.count = 0

    def _lookup(self, images: Tensor) -> Tensor:
        keys = images.detach().cpu().flatten(1).double() @ self._w
        pos = torch.searchsorted(self._keys, keys).clamp(max=len(self._keys) - 1)
        lower = (pos - 1).clamp(min=0)
        pick = torch.where(
            (self._keys[lower] - keys).abs() < (self._keys[pos] - keys).abs(), lower, pos
        )
        if ((self._keys[pick] - keys).abs() > 1e-6 * keys.abs().clamp(min=1)).any():
            raise RuntimeError("could not match a training batch to the training set")
        return self._order[pick]

    @torch.no_grad()
    def _measure(self, relevance: Tensor, gt: Tensor, grid: tuple[int, int], patch: int) -> None:
        gt = gt.bool()
        obj = gt.flatten(1).sum(1).clamp(min=1).double()
        pixels = float(gt[0].numel())
        for t in self.thresholds:
            mask = ObjectMasker(threshold=t)(relevance, relevance.shape[0], grid, relevance.device)
            pix = patch_mask_to_pixels(mask, grid, patch).cpu().reshape(gt.shape).bool()
            inter = (pix & gt).flatten(1).sum(1).double()
            union = (pix | gt).flatten(1).sum(1).clamp(min=1).double()
            s = self.sums[t]
            s[0] += float((pix.flatten(1).sum(1).double() / pixels).sum())
            s[1] += float((inter / obj).sum())
            s[2] += float((inter / union).sum())
        self.count += int(gt.shape[0])

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Measure the masks of this batch before the optimisation step."""
        if batch_idx % self.every or not isinstance(pl_module, CounterfactualFineTuner):
            return
        if pl_module.relevance is None:
            return
        images, targets = batch[0], batch[1]
        idx = self._lookup(images)
        student = pl_module.student
        scores = pl_module.relevance(student, images, targets)
        self._measure(scores, self.masks[idx], student.grid_size, student.patch_size)

    def rows(self) -> list[dict[str, float]]:
        """Return one row per threshold: ``image_mr``, ``object_mr``, ``iou`` and ``n``."""
        n = max(1, self.count)
        return [
            {
                "threshold": t,
                "image_mr": s[0] / n,
                "object_mr": s[1] / n,
                "iou": s[2] / n,
                "n": float(self.count),
            }
            for t, s in sorted(self.sums.items(), reverse=True)
        ]


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


SeedResult = dict[str, Any]


class Runner:
    """Runs and evaluates the methods of one demo profile.

    Args:
        profile: Sizes and recipes.
        bench: The benchmark data.
        teacher_path: The pre-trained weights (a timm state dict).
        work_dir: Folder for intermediate weights (WiSE-FT teachers).
        progress: Callbacks ``(start(description, total), advance())`` of a progress display.
    """

    def __init__(
        self,
        profile: Profile,
        bench: Benchmark,
        teacher_path: Path,
        work_dir: Path,
        progress: tuple[Callable[[str, int], None], Callable[[], None]] | None = None,
    ) -> None:
        self.profile = profile
        self.bench = bench
        self.teacher_path = teacher_path
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._progress = progress
        self.timings: dict[str, float] = {}
        self._zero_shot: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------- models
    def backbone(self) -> Any:
        """A fresh :class:`TimmViT` loaded with the pre-trained weights."""
        return build_backbone(self.profile.model, pretrained=str(self.teacher_path))

    def zero_shot_state(self) -> dict[str, Tensor]:
        """The pre-trained backbone's state dict (``theta_0`` of WiSE-FT)."""
        if self._zero_shot is None:
            self._zero_shot = {k: v.clone() for k, v in self.backbone().state_dict().items()}
        return self._zero_shot

    def evaluate(self, backbone: torch.nn.Module) -> SeedResult:
        """Accuracy (%) on the ID validation split, the ID test set and every OOD set."""
        tests = self.bench.tests
        return {
            "val": accuracy(backbone, self.bench.val),
            "id": accuracy(backbone, tests["id"]),
            "ood": {k: accuracy(backbone, v) for k, v in tests.items() if k != "id"},
        }

    def evaluate_state(self, state: Mapping[str, Tensor]) -> SeedResult:
        """Evaluate a backbone state dict (e.g. a WiSE-FT mixture)."""
        model = self.backbone()
        model.load_state_dict(dict(state))
        return self.evaluate(model)

    def _components(self, spec: MethodSpec, beta: float, seed: int) -> dict[str, Any]:
        ft = self.profile.finetune
        masker: Masker | None = None
        refiller: Refiller | None = None
        if spec.masker == "object":
            masker = ObjectMasker(threshold=ft.object_threshold)
        elif spec.masker == "context":
            masker = ContextMasker(threshold=ft.context_threshold)
        elif spec.masker == "random":
            masker = RandomMasker(ratio=ft.random_ratio)
        if masker is not None:
            refiller = SingleImageRefiller() if spec.refill == "single" else MultiImageRefiller()
        terms: list[DistillationLoss] = []
        if spec.feature is not None:
            terms.append(FeatureDistillationLoss(weight=beta, inputs=spec.feature))  # type: ignore[arg-type]
        if spec.kd == "zero-shot":
            terms.append(LogitDistillationLoss(weight=ft.kd_weight, temperature=ft.kd_temperature))
        elif spec.kd == "wise":
            wise = self.work_dir / f"wise-ft-0.5-seed{seed}.pt"
            terms.append(
                LogitDistillationLoss(
                    weight=ft.kd_weight, temperature=ft.kd_temperature, teacher=str(wise)
                )
            )
        return {
            "masker": masker,
            "refiller": refiller,
            "relevance": AttentionGradRelevance()
            if masker is not None and masker.requires_relevance
            else None,
            "distillation": terms,
        }

    def fine_tune(
        self,
        spec: MethodSpec,
        seed: int,
        beta: float,
        callbacks: Sequence[pl.Callback] = (),
    ) -> tuple[SeedResult, dict[str, Tensor]]:
        """Fine-tune the pre-trained model with one method and evaluate it.

        Args:
            spec: The method.
            seed: Training seed (initial data order, masks, donors).
            beta: Weight of the feature distillation term.
            callbacks: Extra Lightning callbacks.

        Returns:
            ``(accuracies, student state dict)``.
        """
        ft = self.profile.finetune
        pl.seed_everything(seed, workers=True, verbose=False)
        model = CounterfactualFineTuner(
            self.backbone(),
            lr=ft.lr,
            weight_decay=ft.weight_decay,
            schedule="warmup_cosine",
            warmup_steps=ft.warmup_steps,
            **self._components(spec, beta, seed),
        )
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(
            TensorImageDataset(self.bench.train),
            batch_size=ft.batch_size,
            shuffle=True,
            drop_last=True,
            generator=gen,
            num_workers=0,
        )
        cbs: list[pl.Callback] = list(callbacks)
        if self._progress is not None:
            start, advance = self._progress
            start(
                f"{spec.label} · seed {seed}" + (f" · β={beta:g}" if spec.feature else ""), ft.steps
            )
            cbs.append(_StepProgress(advance))
        t0 = time.perf_counter()
        with _quiet_lightning():
            trainer = pl.Trainer(
                max_steps=ft.steps,
                max_epochs=-1,
                accelerator="auto",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                callbacks=cbs,
                deterministic=False,
            )
            trainer.fit(model, train_dataloaders=loader)
        student = model.student.cpu()
        result = self.evaluate(student)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return result, state

    def wise_curve(
        self,
        state: Mapping[str, Tensor],
        alphas: Sequence[float],
        cache: Mapping[float, SeedResult] | None = None,
    ) -> list[SeedResult]:
        """Evaluate WiSE-FT mixtures ``(1 - alpha) * zero-shot + alpha * state``.

        Args:
            state: Fine-tuned backbone state dict.
            alphas: Mixing coefficients.
            cache: Already known results by alpha (0 and 1 are usually known).

        Returns:
            One result per alpha, each with an ``alpha`` entry.
        """
        out = []
        for alpha in alphas:
            if cache is not None and alpha in cache:
                res = copy.deepcopy(dict(cache[alpha]))
            else:
                res = self.evaluate_state(
                    interpolate_state_dicts(self.zero_shot_state(), state, alpha)
                )
            res["alpha"] = alpha
            out.append(res)
        return out

    def wise_state(self, state: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
        """Return the WiSE-FT mixture ``(1 - alpha) * zero-shot + alpha * state``."""
        return interpolate_state_dicts(self.zero_shot_state(), state, alpha)

    def save_state(self, state: Mapping[str, Tensor], name: str) -> Path:
        """Save a backbone state dict into the work folder and return its path."""
        path = self.work_dir / name
        torch.save(dict(state), path)
        return path

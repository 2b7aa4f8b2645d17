"""The :class:`CounterfactualFineTuner` LightningModule.

Implements the training objective of Xiao et al., *Masked Images Are
Counterfactual Samples for Robust Fine-tuning* (CVPR 2023, arXiv:2303.03052,
Eq. 2)::

    L = CE(g(f(x)), y) + beta * MSE(f(x_cf), f_0(x_cf))

where ``x_cf`` is built from ``x`` by a :class:`~cfmask.masking.Masker` (which
patches, possibly guided by a :class:`~cfmask.relevance.RelevanceMap` computed
on the current student) and a :class:`~cfmask.masking.Refiller` (what to put
there), and ``f_0`` is a frozen copy of the pre-trained model. Any number of
:class:`~cfmask.losses.DistillationLoss` terms can be combined, each with its own
teacher, which covers the paper's baselines (vanilla fine-tuning: no term; KD and
WiSE-KD: a logit term on clean images) and its Fig. 6 integration (feature
distillation on ``x_cf`` plus KD from a WiSE-FT teacher on ``x``).
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from cfmask.backbones.base import VisionBackbone
from cfmask.losses import DistillationLoss, FeatureDistillationLoss
from cfmask.masking.base import Counterfactual, Masker, Refiller
from cfmask.metrics import OOD_AVG, EvalSet, SubsetAccuracy, describe_test_sets, ood_average
from cfmask.relevance.base import RelevanceMap
from cfmask.weights import check_compatible, read_model_weights

__all__ = ("CounterfactualFineTuner",)

_COMPONENTS = ("backbone", "relevance", "masker", "refiller")
_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
Schedule = Literal["warmup_cosine", "onecycle", "constant"]
INITIAL_TEACHER = "initial"


def _teacher_key(source: str | None) -> str:
    if source is None:
        return INITIAL_TEACHER
    return "ckpt_" + re.sub(r"[^0-9A-Za-z_]", "_", source)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier of the paper's schedule (WiSE-FT's ``cosine_lr``).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps``
    steps, then half a cosine from 1 down to 0 at ``total_steps``.

    Args:
        step: Zero-based optimiser step.
        warmup_steps: Length of the warm-up (500 in the paper).
        total_steps: Total number of optimiser steps.

    Returns:
        Multiplier in ``[0, 1]``.

    Example:
        >>> warmup_cosine_factor(0, 10, 110), warmup_cosine_factor(60, 10, 110)
        (0.1, 0.5)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class CounterfactualFineTuner(pl.LightningModule):
    """Fine-tune a ViT classifier with counterfactual feature distillation.

    Args:
        backbone: The pre-trained classifier to fine-tune (encoder + head).
        masker: Chooses the patches to replace; ``None`` means ``x_cf = x`` (the
            paper's "no masking" row of Table 1).
        refiller: Builds ``x_cf``; defaults to
            :class:`~cfmask.masking.SingleImageRefiller` when a masker is given.
        relevance: Patch relevance for maskers that need it; defaults to
            :class:`~cfmask.relevance.AttentionGradRelevance` (the reference's CAM).
        distillation: Distillation terms added to the cross-entropy. ``None``
            gives ``[FeatureDistillationLoss(weight=30)]`` (the paper's method);
            ``[]`` gives vanilla fine-tuning.
        lr: Peak learning rate of AdamW (3e-5 in the paper).
        weight_decay: AdamW weight decay, applied to all parameters (0.1).
        betas: AdamW betas; with ``schedule="onecycle"`` beta1 is cycled
            0.95 -> 0.85 -> 0.95 as in the reference code.
        schedule: ``"warmup_cosine"`` (the paper: linear warm-up, cosine decay to
            0), ``"onecycle"`` (the reference code's ``OneCycleLR``) or ``"constant"``.
        warmup_steps: Warm-up length of ``"warmup_cosine"`` (500).
        pct_start: Warm-up fraction of ``"onecycle"`` (0.02).
        gradient_clip_norm: Global L2 norm clip (1.0); ``None`` disables. The
            Trainer's ``gradient_clip_val``, when set, takes precedence.
        relevance_source: Model on which relevance is computed: ``"student"``
            (the current model, as the reference does) or ``"teacher"``.
        trainable: ``"all"`` parameters, or ``"head"`` only (linear probing, the
            first stage of LP-FT).
        init_weights: Optional checkpoint or state dict loaded into the model
            before training (e.g. the linear probe for LP-FT, or a zero-shot
            run). The frozen initial teacher is copied after loading it.
        fuse_student_passes: Run the student on ``[x; x_cf]`` as one batch when
            both passes are plain pixel inputs (same result, fewer kernel launches).
        share_relevance_pass: Take the clean batch's features and logits from the
            relevance pass (attention probes on the current student) instead of a
            second forward pass on ``x``, when that gives the same function (see
            :meth:`can_share_relevance_pass`). Saves one forward per step.

    Distributed training (DDP): each rank builds its counterfactuals from its own
    per-device batch. Refill donors (the single-fill permutation, the multi-fill
    sources) and random masks are drawn from the local batch only, with the rank's
    own global generator, as the reference does (with 4 GPUs splitting 512 images,
    donors come from the 128 images on the same GPU). With the same seed on every rank
    (``seed_everything`` runs in every process) all ranks draw the same permutation of
    their local indices, which is also what the reference does. Relevance maps and
    losses are per-rank too; DDP averages the gradients, so the loss is the mean over
    ranks of the per-rank means.

    Example:
        >>> import timm
        >>> from cfmask.backbones import TimmViT
        >>> from cfmask.masking import ObjectMasker
        >>> model = CounterfactualFineTuner(
        ...     TimmViT("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8,
        ...             model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2}),
        ...     masker=ObjectMasker(threshold=0.3),
        ... )
        >>> type(model.refiller).__name__, type(model.relevance).__name__
        ('SingleImageRefiller', 'AttentionGradRelevance')
    """

    def __init__(
        self,
        backbone: VisionBackbone,
        masker: Masker | None = None,
        refiller: Refiller | None = None,
        relevance: RelevanceMap | None = None,
        distillation: list[DistillationLoss] | None = None,
        lr: float = 3e-5,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        schedule: Schedule = "warmup_cosine",
        warmup_steps: int = 500,
        pct_start: float = 0.02,
        gradient_clip_norm: float | None = 1.0,
        relevance_source: Literal["student", "teacher"] = "student",
        trainable: Literal["all", "head"] = "all",
        init_weights: str | None = None,
        fuse_student_passes: bool = True,
        share_relevance_pass: bool = True,
    ) -> None:
        super().__init__()
        _validate_options(
            lr, weight_decay, schedule, warmup_steps, pct_start, relevance_source, trainable
        )
        self.save_hyperparameters(ignore=[*_COMPONENTS, "distillation"])

        if masker is not None:
            if refiller is None:
                from cfmask.masking.refillers import SingleImageRefiller

                refiller = SingleImageRefiller()
            if relevance is None and masker.requires_relevance:
                from cfmask.relevance.attention import AttentionGradRelevance

                relevance = AttentionGradRelevance()
        if distillation is None:
            distillation = [FeatureDistillationLoss()]

        self.student = backbone
        if init_weights is not None:
            self._load_into(self.student, init_weights, "init_weights")
        self._last_mask: Tensor | None = None
        self.masker = masker
        self.refiller = refiller
        self.relevance = relevance
        self.distillation = nn.ModuleList(distillation)
        self.teachers = nn.ModuleDict()
        for term in distillation:
            key = _teacher_key(term.teacher)
            if key not in self.teachers:
                self.teachers[key] = self._build_teacher(term.teacher)
        if relevance_source == "teacher" and INITIAL_TEACHER not in self.teachers:
            self.teachers[INITIAL_TEACHER] = self._build_teacher(None)

        # Store every component as {class_path, init_args}: the format LightningCLI
        # writes, so checkpoints rebuild them from plain data in both entry points.
        self.hparams["backbone"] = backbone.config()
        self.hparams["masker"] = masker.config() if masker is not None else None
        self.hparams["refiller"] = refiller.config() if refiller is not None else None
        self.hparams["relevance"] = relevance.config() if relevance is not None else None
        self.hparams["distillation"] = [term.config() for term in distillation]
        self.hparams.setdefault("_instantiator", _INSTANTIATOR)

        self.val_accuracy = SubsetAccuracy(num_classes=backbone.num_classes)
        self.test_accuracies = nn.ModuleList()
        self.test_eval_sets: list[EvalSet] = []
        self.test_results: dict[str, float] = {}

    # ------------------------------------------------------------------ setup
    def _build_teacher(self, source: str | None) -> VisionBackbone:
        teacher = copy.deepcopy(self.student)
        if source is not None:
            self._load_into(teacher, source, "teacher")
        teacher.requires_grad_(False)
        teacher.eval()
        return teacher

    @staticmethod
    def _load_into(module: VisionBackbone, path: str, what: str) -> None:
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(
                f"{what} checkpoint not found: {path}. Pass the path of a cfmask .ckpt "
                "or a state dict saved with torch.save(model.state_dict(), path)."
            )
        weights = read_model_weights(path)
        check_compatible(module.state_dict(), weights, f"{what} checkpoint {path}")
        module.load_state_dict(weights)

    def setup(self, stage: str) -> None:
        """Check that the datamodule's class count matches the model's head."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        expected = getattr(datamodule, "num_classes", None)
        if isinstance(expected, int) and expected != self.student.num_classes:
            raise ValueError(
                f"the datamodule has {expected} classes but the model's head has "
                f"{self.student.num_classes} outputs; build the backbone for the "
                "datamodule's classes (num_classes for TimmViT, class_names for "
                "OpenCLIPViT)."
            )

    def on_fit_start(self) -> None:
        """Silence Lightning's eval-mode warning when it would only list the frozen teachers."""
        in_eval = [name for name, m in self.named_modules() if not m.training]
        if in_eval and all(name.startswith("teachers") for name in in_eval):
            warnings.filterwarnings(
                "ignore", message=rf"Found {len(in_eval)} module\(s\) in eval mode at the start"
            )

    def train(self, mode: bool = True) -> CounterfactualFineTuner:
        """Set train mode on the student; teachers always stay in eval mode."""
        super().train(mode)
        self.teachers.eval()
        return self

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint that was trained with another backbone."""
        saved = checkpoint.get("hyper_parameters", {}).get("backbone")
        mine = self.hparams.get("backbone")
        if (
            saved is not None
            and mine is not None
            and _without_memory_options(saved) != _without_memory_options(mine)
        ):
            raise ValueError(
                "this checkpoint was trained with the backbone "
                f"{saved.get('class_path')} {saved.get('init_args')}, but the model "
                f"was built with {mine.get('class_path')} {mine.get('init_args')}. "
                "Build the model from the checkpoint "
                "(CounterfactualFineTuner.load_from_checkpoint) or use the same "
                "backbone config."
            )

    # --------------------------------------------------------- counterfactual
    def make_counterfactual(
        self, images: Tensor, targets: Tensor, scores: Tensor | None = None
    ) -> Counterfactual:
        """Build the counterfactual view of a batch (detached).

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` ground-truth class indices.
            scores: Precomputed ``(B, N)`` relevance; computed here when the masker
                needs it and none is given.

        Returns:
            The :class:`~cfmask.masking.Counterfactual`; ``x_cf = x`` without a masker.
        """
        if self.masker is None or self.refiller is None:
            return Counterfactual(images=images)
        batch_size = images.shape[0]
        if batch_size < self.refiller.min_batch_size:
            raise ValueError(
                f"{type(self.refiller).__name__} takes patches from other images and "
                f"needs at least {self.refiller.min_batch_size} images per batch, got "
                f"{batch_size}. Use a larger batch size and drop_last=True in the "
                "training loader."
            )
        if scores is None and self.masker.requires_relevance:
            relevance = self._require_relevance()
            source = (
                self.student
                if self.hparams["relevance_source"] == "student"
                else self.teachers[INITIAL_TEACHER]
            )
            scores = relevance(source, images, targets)
        mask = self.masker(scores, batch_size, self.student.grid_size, images.device)
        self._last_mask = mask
        cf: Counterfactual = self.refiller(images.detach(), mask, self.student.patch_size)
        return cf

    def _require_relevance(self) -> RelevanceMap:
        if self.relevance is None:
            raise ValueError(
                f"{type(self.masker).__name__} needs relevance scores but no relevance "
                "map is configured; set `relevance` (e.g. AttentionGradRelevance)."
            )
        return self.relevance

    def can_share_relevance_pass(self) -> bool:
        """Whether the relevance pass can also provide the clean-batch logits.

        True when ``share_relevance_pass`` is on, the masker needs relevance from the
        student, and the student computes the same function in train and eval mode
        (no active dropout, drop-path or batch norm), since the reference computes
        the map in eval mode.
        """
        return bool(
            self.hparams["share_relevance_pass"]
            and self.masker is not None
            and self.masker.requires_relevance
            and self.hparams["relevance_source"] == "student"
            and not (self.student.training and has_stochastic_layers(self.student))
        )

    # --------------------------------------------------------------- training
    def _student_features(self, images: Tensor, cf: Counterfactual) -> tuple[Tensor, Tensor]:
        """Student features on ``x`` and on ``x_cf`` (one batched pass where possible)."""
        plain_cf = cf.keep_index is None and cf.key_mask is None
        if cf.images is images and plain_cf:
            feats = self.student.forward_features(images)
            return feats, feats
        if plain_cf and self.hparams["fuse_student_passes"]:
            both = self.student.forward_features(torch.cat([images, cf.images]))
            feats, feats_cf = torch.split(both, images.shape[0])
            return feats, feats_cf
        feats = self.student.forward_features(images)
        return feats, self._student_cf_features(cf)

    def _student_cf_features(self, cf: Counterfactual) -> Tensor:
        return self.student.forward_features(
            cf.images, keep_index=cf.keep_index, key_mask=cf.key_mask
        )

    def compute_losses(self, images: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Compute every term of the objective for one batch.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` class indices.

        Returns:
            ``loss`` (the total), ``loss_ce``, ``loss_distill`` (sum of the
            weighted terms, 0 without any) and ``logits`` of the clean batch.
        """
        self.student.check_image_size(images)
        terms: Sequence[DistillationLoss] = list(self.distillation)  # type: ignore[arg-type]
        feats_cf: Tensor | None = None
        if not any(t.inputs == "counterfactual" for t in terms):
            cf = Counterfactual(images)
            feats = self.student.forward_features(images)
            logits = self.student.forward_head(feats)
        elif self.can_share_relevance_pass():
            shared = self._require_relevance().forward_with_outputs(self.student, images, targets)
            feats, logits = shared.features, shared.logits
            cf = self.make_counterfactual(images, targets, scores=shared.scores)
            feats_cf = self._student_cf_features(cf)
        else:
            cf = self.make_counterfactual(images, targets)
            feats, feats_cf = self._student_features(images, cf)
            logits = self.student.forward_head(feats)
        loss_ce = F.cross_entropy(logits.float(), targets)
        loss_distill = logits.new_zeros((), dtype=torch.float32)
        for term in terms:
            loss_distill = loss_distill + self._distill_term(
                term, images, cf, feats, logits, feats_cf
            )
        return {
            "loss": loss_ce + loss_distill,
            "loss_ce": loss_ce,
            "loss_distill": loss_distill,
            "logits": logits,
        }

    def _distill_term(
        self,
        term: DistillationLoss,
        images: Tensor,
        cf: Counterfactual,
        feats: Tensor,
        logits: Tensor,
        feats_cf: Tensor | None,
    ) -> Tensor:
        teacher: VisionBackbone = self.teachers[_teacher_key(term.teacher)]  # type: ignore[assignment]
        on_cf = term.inputs == "counterfactual"
        student_feats = feats_cf if on_cf else feats
        assert student_feats is not None
        with torch.no_grad():
            if on_cf:
                t_feats = teacher.forward_features(
                    cf.images, keep_index=cf.keep_index, key_mask=cf.key_mask
                )
            else:
                t_feats = teacher.forward_features(images)
            t_out = t_feats if term.target == "features" else teacher.forward_head(t_feats)
        if term.target == "features":
            s_out = student_feats
        else:
            s_out = logits if not on_cf else self.student.forward_head(student_feats)
        result: Tensor = term(s_out, t_out)
        return result

    def training_step(self, batch: Sequence[Tensor] | None, batch_idx: int) -> Tensor | None:
        """One optimisation step of Eq. 2 (plus any extra distillation terms)."""
        if batch is None:  # every image of the batch was skipped as unreadable
            return None
        images, targets = batch[0], batch[1]
        self._last_mask = None
        out = self.compute_losses(images, targets)
        bs = images.shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("train/loss_ce", out["loss_ce"], batch_size=bs)
        self.log("train/loss_distill", out["loss_distill"], batch_size=bs)
        if self._last_mask is not None:
            self.log("train/mask_fraction", self._last_mask.float().mean(), batch_size=bs)
        return out["loss"]

    # ------------------------------------------------------------- evaluation
    def validation_step(self, batch: Sequence[Tensor] | None, batch_idx: int) -> None:
        """Top-1 accuracy on the held-out split (drives best-checkpoint selection)."""
        if batch is None:
            return
        images, targets = batch[0], batch[1]
        logits = self.student(images)
        self.val_accuracy.update(logits, targets)
        self.log("val/loss", F.cross_entropy(logits.float(), targets), batch_size=images.shape[0])
        self.log("val/acc1", self.val_accuracy, prog_bar=True)

    def on_test_start(self) -> None:
        """Create one accuracy metric per test set described by the datamodule."""
        datamodule = getattr(self.trainer, "datamodule", None)
        self.test_eval_sets = describe_test_sets(datamodule, self.student.num_classes)
        for s in self.test_eval_sets:
            if s.num_classes != self.student.num_classes:
                raise ValueError(
                    f"test set {s.name!r} is scored over {s.num_classes} classes but the "
                    f"model has {self.student.num_classes} outputs; build the backbone's "
                    "head for the datamodule's classes (e.g. its class_names)."
                )
        self.test_accuracies = nn.ModuleList(s.metric() for s in self.test_eval_sets).to(
            self.device
        )

    def test_step(
        self, batch: Sequence[Tensor] | None, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Accumulate top-1 accuracy of test set ``dataloader_idx``."""
        if batch is None:  # every image of the batch was skipped as unreadable
            return
        if dataloader_idx >= len(self.test_accuracies):
            raise ValueError(
                f"test dataloader {dataloader_idx} has no description; the datamodule "
                f"describes {len(self.test_accuracies)} test sets. Give it an `eval_sets` "
                "(or `test_set_names`) list matching its loaders."
            )
        images, targets = batch[0], batch[1]
        metric: SubsetAccuracy = self.test_accuracies[dataloader_idx]  # type: ignore[assignment]
        metric.update(self.student(images), targets)

    def on_test_epoch_end(self) -> None:
        """Log ``test/<set>/acc1`` for each set and ``test/ood_avg/acc1``."""
        results = {
            s.name: float(metric.compute())  # type: ignore[operator]
            for s, metric in zip(self.test_eval_sets, self.test_accuracies, strict=True)
        }
        id_names = [s.name for s in self.test_eval_sets if s.is_id]
        if id_names and len(results) > 1:
            results[OOD_AVG] = ood_average(results, id_names[0])
        for name, value in results.items():
            self.log(f"test/{name}/acc1", value, add_dataloader_idx=False)
        self.test_results = results

    # --------------------------------------------------------------- optimiser
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (all of the student, or only its head)."""
        if self.hparams["trainable"] == "all":
            return [p for p in self.student.parameters() if p.requires_grad]
        head = self.student.head_parameters()
        ids = {id(p) for p in head}
        for p in self.student.parameters():
            p.requires_grad_(id(p) in ids)
        return head

    def configure_optimizers(self) -> Any:
        """AdamW on the trainable parameters with the chosen per-step schedule."""
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.trainable_parameters(),
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            betas=tuple(hp["betas"]),
        )
        if hp["schedule"] == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler: LRScheduler
        if hp["schedule"] == "onecycle":
            if hp["pct_start"] * total < 2:
                raise ValueError(
                    f"schedule='onecycle' with pct_start={hp['pct_start']} leaves less than 2 "
                    f"warm-up steps out of {total}; train for more steps, raise pct_start, or "
                    "use schedule='warmup_cosine'."
                )
            scheduler = OneCycleLR(
                optimizer,
                max_lr=hp["lr"],
                total_steps=total,
                pct_start=hp["pct_start"],
                anneal_strategy="cos",
                cycle_momentum=True,
            )
        else:
            warmup = int(hp["warmup_steps"])
            scheduler = LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warmup, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the global gradient norm (1.0 by default, as in the paper)."""
        if gradient_clip_val is None:
            gradient_clip_val = self.hparams["gradient_clip_norm"]
            gradient_clip_algorithm = "norm"
        if gradient_clip_val:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=gradient_clip_val,
                gradient_clip_algorithm=gradient_clip_algorithm,
            )

    # ------------------------------------------------------------ convenience
    def forward(self, images: Tensor) -> Tensor:
        """Classify ``(B, C, H, W)`` images in ``[0, 1]`` into ``(B, K)`` logits."""
        logits: Tensor = self.student(images)
        return logits

    def student_state_dict(self) -> Mapping[str, Tensor]:
        """The fine-tuned model's weights (without teachers)."""
        return self.student.state_dict()


_MEMORY_OPTIONS = ("grad_checkpointing",)


def _without_memory_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """A backbone config without options that change memory use but not the weights."""
    out = dict(config)
    init_args = out.get("init_args")
    if isinstance(init_args, Mapping):
        out["init_args"] = {k: v for k, v in init_args.items() if k not in _MEMORY_OPTIONS}
    return out


def has_stochastic_layers(module: nn.Module) -> bool:
    """Whether ``module`` has layers whose train-mode output differs from eval mode.

    Dropout with ``p > 0``, stochastic depth (timm ``DropPath``) with a positive
    rate, and batch norm.

    Args:
        module: Any module.

    Returns:
        ``True`` if such a layer exists.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return True
        if type(m).__name__ == "DropPath" and float(getattr(m, "drop_prob", 0.0)) > 0:
            return True
    return False


def _validate_options(
    lr: float,
    weight_decay: float,
    schedule: str,
    warmup_steps: int,
    pct_start: float,
    relevance_source: str,
    trainable: str,
) -> None:
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if schedule not in ("warmup_cosine", "onecycle", "constant"):
        raise ValueError(
            f"unknown schedule {schedule!r}; choose 'warmup_cosine', 'onecycle' or 'constant'"
        )
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
    if relevance_source not in ("student", "teacher"):
        raise ValueError(
            f"relevance_source must be 'student' or 'teacher', got {relevance_source!r}"
        )
    if trainable not in ("all", "head"):
        raise ValueError(f"trainable must be 'all' or 'head', got {trainable!r}")

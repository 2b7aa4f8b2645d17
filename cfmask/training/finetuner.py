"""The :class:`CounterfactualFineTuner` LightningModule.

Trains a ViT classifier with the objective of Xiao et al., *Masked Images Are
Counterfactual Samples for Robust Fine-tuning* (CVPR 2023, arXiv:2303.03052, Eq. 2),
which :class:`~cfmask.training.objective.CounterfactualObjective` computes. This module adds
what Lightning needs around it: hyperparameters that rebuild every component from a
checkpoint, AdamW with the paper's schedule and gradient clipping, logging, and the
validation and test metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from cfmask.backbones.base import VisionBackbone
from cfmask.evaluation.eval_sets import EvalSet, describe_test_sets
from cfmask.evaluation.metrics import (
    OOD_AVG,
    SubsetAccuracy,
    ood_average,
    top5_results,
    top_k_average,
)
from cfmask.losses import DistillationLoss
from cfmask.masking.base import Masker, Refiller
from cfmask.relevance.base import RelevanceMap
from cfmask.training.checkpoints import (
    RNG_KEY,
    capture_rng_state,
    install_safe_checkpoint_io,
    refusing_unsafe_checkpoints,
    require_weights_only,
    restore_rng_state,
    resume_training_loaders,
)
from cfmask.training.head_setup import build_deferred_heads
from cfmask.training.head_setup import (
    with_saved_class_names as with_saved_class_names,  # older path
)
from cfmask.training.objective import CounterfactualObjective, load_weights_into
from cfmask.training.prediction import predict_outputs
from cfmask.training.recipe_checks import (
    check_supported_strategy,
    global_batch_mismatch,
    validate_options,
    without_memory_options,
)
from cfmask.training.teacher_relevance import cached_relevance_for_fit, request_indexed_batches

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = (
    "CounterfactualFineTuner",
    "global_batch_mismatch",
    "without_memory_options",
)

_COMPONENTS = ("backbone", "relevance", "masker", "refiller")
_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
Schedule = Literal["warmup_cosine", "onecycle", "constant"]


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

    The loss of a batch comes from :attr:`objective`, a
    :class:`~cfmask.training.objective.CounterfactualObjective` built from the arguments below;
    ``training_step`` logs its terms and returns ``{"loss": ..., "mask": ...}``, so a
    callback's ``on_train_batch_end`` finds the step's ``(B, N)`` patch mask (or
    ``None``) in ``outputs["mask"]``. The objective's modules are also attributes of
    the fine-tuner (``student``, ``masker``, ``refiller``, ``relevance``,
    ``distillation``, ``teachers``) and the checkpoint keys are named after them; the
    objective itself is a plain attribute, not a submodule, so each weight is stored
    once.

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
        gradient_clip_norm: Global L2 norm clip (1.0); ``None`` or ``0`` disables
            (a negative value is an error). The Trainer's ``gradient_clip_val``,
            when set, takes precedence.
        relevance_source: Model on which relevance is computed: ``"student"``
            (the current model, as the reference does), ``"teacher"`` (the frozen
            initial model, in every step) or ``"cached_teacher"`` (the frozen initial
            model's map of every training image, computed once before the first step
            and read by sample index; not the reference's semantics, and only valid
            without training augmentation: see :mod:`cfmask.training.teacher_relevance`).
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
            :meth:`~cfmask.training.objective.CounterfactualObjective.can_share_relevance_pass`).
            Saves one forward per step.
        recipe_global_batch: The global batch a recipe's learning rate and schedule
            were written for (512 in the paper's recipes). When set, a fit whose
            global batch (per-device batch x devices x nodes x gradient accumulation)
            differs warns at start, naming both numbers; see
            :func:`global_batch_mismatch`.
        relevance_cache_dir: Where ``relevance_source="cached_teacher"`` stores its
            maps; ``None`` takes the datamodule's ``cache_dir``.

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
        relevance_source: Literal["student", "teacher", "cached_teacher"] = "student",
        trainable: Literal["all", "head"] = "all",
        init_weights: str | None = None,
        fuse_student_passes: bool = True,
        share_relevance_pass: bool = True,
        recipe_global_batch: int | None = None,
        relevance_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        validate_options(
            lr,
            weight_decay,
            betas,
            schedule,
            warmup_steps,
            pct_start,
            gradient_clip_norm,
            relevance_source,
            trainable,
        )
        if recipe_global_batch is not None and recipe_global_batch <= 0:
            raise ValueError(f"recipe_global_batch must be > 0, got {recipe_global_batch}")
        self.save_hyperparameters(ignore=[*_COMPONENTS, "distillation"])

        if init_weights is not None:
            if (
                backbone.needs_class_names
            ):  # loaded once the head exists (cfmask.training.head_setup)
                _require_file(init_weights, "init_weights")
            else:
                load_weights_into(backbone, init_weights, "init_weights")
        objective = CounterfactualObjective(
            backbone,
            masker=masker,
            refiller=refiller,
            relevance=relevance,
            distillation=distillation,
            relevance_source="student" if relevance_source == "student" else "teacher",
            fuse_student_passes=fuse_student_passes,
            share_relevance_pass=share_relevance_pass,
        )
        # Registered here under the names the checkpoints use; the objective is kept
        # out of the module tree (see the class docstring).
        self.student = objective.student
        self.masker = objective.masker
        self.refiller = objective.refiller
        self.relevance = objective.relevance
        self.distillation = objective.distillation
        self.teachers = objective.teachers
        self.__dict__["_objective"] = objective
        if relevance_source == "cached_teacher" and not (
            masker is not None and masker.requires_relevance
        ):
            raise ValueError(
                "relevance_source='cached_teacher' caches the map a masker reads, but the "
                f"masker {type(masker).__name__} uses no relevance; use a relevance masker "
                "(ObjectMasker, ContextMasker) or relevance_source='student'."
            )
        # (num_samples, N) fp16 teacher map of the training set (cached_teacher only);
        # a plain attribute, so it never enters a checkpoint.
        self._cached_relevance: Tensor | None = None
        self._rng_to_restore: dict[str, Any] | None = None

        # Store every component as {class_path, init_args}: the format LightningCLI
        # writes, so checkpoints rebuild them from plain data in both entry points.
        self.hparams["backbone"] = backbone.config()
        self.hparams["masker"] = self.masker.config() if self.masker is not None else None
        self.hparams["refiller"] = self.refiller.config() if self.refiller is not None else None
        self.hparams["relevance"] = self.relevance.config() if self.relevance is not None else None
        self.hparams["distillation"] = [term.config() for term in objective.terms]
        self.hparams.setdefault("_instantiator", _INSTANTIATOR)

        self.val_accuracy = SubsetAccuracy(num_classes=backbone.num_classes)
        self.test_accuracies = nn.ModuleList()
        self.test_eval_sets: list[EvalSet] = []
        self.test_results: dict[str, float] = {}
        self.test_results_top5: dict[str, float] = {}
        self.test_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ setup
    @property
    def objective(self) -> CounterfactualObjective:
        """The training objective, sharing this module's student, teachers and components."""
        objective: CounterfactualObjective = self.__dict__["_objective"]
        return objective

    def setup(self, stage: str) -> None:
        """Read checkpoints safely, build a deferred head, check the class count against it.

        A backbone built with ``class_names="datamodule"`` gets its zero-shot head
        here, from the datamodule's ``class_names``.

        Installs :class:`~cfmask.training.checkpoints.SafeCheckpointIO` on the Trainer's
        strategy: Lightning restores a ``ckpt_path`` after this hook, and then reads
        it with ``weights_only=True`` whether it is a local file or a URL. When fitting
        with ``recipe_global_batch`` set, also warn if the global batch differs from
        the recipe's. Refuses sharded strategies (:func:`check_supported_strategy`).
        """
        if self._trainer is not None:
            check_supported_strategy(self.trainer.strategy)
            install_safe_checkpoint_io(self.trainer.strategy)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if self._trainer is not None:
            self._bind_class_names(datamodule)
        if stage == "fit" and self._trainer is not None:
            self._check_recipe_global_batch(datamodule)
            if self.hparams["relevance_source"] == "cached_teacher":
                request_indexed_batches(datamodule)
        expected = getattr(datamodule, "num_classes", None)
        if isinstance(expected, int) and expected != self.student.num_classes:
            raise ValueError(
                f"the datamodule has {expected} classes but the model's head has "
                f"{self.student.num_classes} outputs; build the backbone for the "
                "datamodule's classes (num_classes for TimmViT, class_names for "
                "OpenCLIPViT)."
            )

    def _bind_class_names(self, datamodule: Any) -> None:
        """Build a deferred zero-shot head from the datamodule.

        The stored backbone config then holds the explicit class names, so a
        checkpoint of this run rebuilds without the datamodule (see
        :mod:`cfmask.training.head_setup`).
        """
        init_weights = self.hparams["init_weights"]
        if build_deferred_heads(self.objective, datamodule, self.trainer, init_weights):
            self.hparams["backbone"] = self.student.config()
            self.val_accuracy = SubsetAccuracy(num_classes=self.student.num_classes)

    def _check_recipe_global_batch(self, datamodule: Any) -> None:
        expected = self.hparams.get("recipe_global_batch")
        if expected is None:
            return
        trainer = self.trainer
        message = global_batch_mismatch(
            int(expected),
            getattr(datamodule, "batch_size", None),
            int(trainer.world_size),
            int(trainer.accumulate_grad_batches),
        )
        if message is not None:
            rank_zero_warn(message, category=UserWarning)

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
        self.objective.train(mode)
        return self

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Rebuild a fine-tuner from a checkpoint file, URL or stream, safely.

        Same as Lightning's ``load_from_checkpoint``, except that the checkpoint is
        always read with ``weights_only=True`` (remote paths included), so nothing
        in the file can run code.

        Args:
            checkpoint_path: Local path, ``http(s)://`` URL, fsspec path or stream.
            map_location: Where to put the tensors (as in ``torch.load``).
            hparams_file: Optional YAML/CSV with hyper-parameters that replace the
                stored ones.
            strict: Whether the state dict must match exactly.
            weights_only: ``None`` or ``True``; ``False`` is refused.
            **kwargs: Hyper-parameters that override the stored ones.

        Returns:
            The rebuilt fine-tuner.

        Raises:
            ValueError: If ``weights_only=False`` is requested.
            UnsafeCheckpointError: If the file holds objects that could run code.
        """
        require_weights_only(weights_only)
        with refusing_unsafe_checkpoints(checkpoint_path):
            model: Self = super().load_from_checkpoint(
                checkpoint_path,
                map_location=map_location,
                hparams_file=hparams_file,
                strict=strict,
                weights_only=True,
                **kwargs,
            )
        return model

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the global random-generator states (for an exact resume)."""
        checkpoint[RNG_KEY] = capture_rng_state()

    def on_train_start(self) -> None:
        """When resuming a fit, continue the data order and random draws of the saved run.

        Restored here, right before the first batch is fetched, and not when the
        checkpoint is read: what runs in between (the sanity check, building the
        loaders) would otherwise shift them. See
        :func:`~cfmask.training.checkpoints.resume_training_loaders`.

        With ``relevance_source="cached_teacher"``, first reads the teacher's map of the
        training set, building it if missing (:mod:`cfmask.training.teacher_relevance`).
        """
        if self.hparams["relevance_source"] == "cached_teacher":
            self._cached_relevance = cached_relevance_for_fit(
                self.objective, self.trainer, self.hparams.get("relevance_cache_dir")
            )
        pending, self._rng_to_restore = self._rng_to_restore, None
        if self._trainer is None or not self.trainer.ckpt_path:
            return
        resume_training_loaders(self.trainer)
        if pending is not None:
            restore_rng_state(pending)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint that was trained with another backbone; keep its RNG states."""
        self._rng_to_restore = checkpoint.get(RNG_KEY)
        saved = checkpoint.get("hyper_parameters", {}).get("backbone")
        mine = self.hparams.get("backbone")
        if (
            saved is not None
            and mine is not None
            and without_memory_options(saved) != without_memory_options(mine)
        ):
            raise ValueError(
                "this checkpoint was trained with the backbone "
                f"{saved.get('class_path')} {saved.get('init_args')}, but the model "
                f"was built with {mine.get('class_path')} {mine.get('init_args')}. "
                "Build the model from the checkpoint "
                "(CounterfactualFineTuner.load_from_checkpoint) or use the same "
                "backbone config."
            )

    # --------------------------------------------------------------- training
    def training_step(
        self, batch: Sequence[Tensor] | None, batch_idx: int
    ) -> dict[str, Tensor | None] | None:
        """One optimisation step of Eq. 2 (plus any extra distillation terms).

        Returns:
            ``{"loss": ..., "mask": ...}``: the total loss and the ``(B, N)`` bool
            patch mask of the step (``None`` when none was drawn), which callbacks
            receive as ``outputs`` in ``on_train_batch_end``; ``None`` for an empty
            batch.
        """
        if batch is None:  # every image of the batch was skipped as unreadable
            return None
        scores = None
        if self.hparams["relevance_source"] == "cached_teacher":
            batch, scores = self._cached_rows(batch)
        images, targets = batch[0], batch[1]
        object_masks = batch[2] if len(batch) > 2 else None
        out = self.objective(images, targets, object_masks=object_masks, scores=scores)
        bs = images.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        self.log("train/loss_ce", out.loss_ce, batch_size=bs)
        self.log("train/loss_distill", out.loss_distill, batch_size=bs)
        if out.mask_fraction is not None:
            self.log("train/mask_fraction", out.mask_fraction, batch_size=bs)
        return {"loss": out.loss, "mask": out.mask}

    def _cached_rows(self, batch: Sequence[Tensor]) -> tuple[Sequence[Tensor], Tensor]:
        """Split the sample indices off a batch and look up their cached teacher maps."""
        indices = batch[-1]
        if self._cached_relevance is None:
            raise RuntimeError("the cached teacher relevance is read in on_train_start")
        if not (
            isinstance(indices, Tensor)
            and indices.ndim == 1
            and indices.shape[0] == batch[0].shape[0]
            and not indices.is_floating_point()
        ):
            raise ValueError(
                "with relevance_source='cached_teacher' every training batch must end with "
                "the (B,) sample indices (cfmask.data.IndexedDataset)"
            )
        rows = self._cached_relevance[indices.to(self._cached_relevance.device)]
        return batch[:-1], rows.float()

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
        """Log ``test/<set>/acc1`` for each set and ``test/ood_avg/acc1``, and top-5.

        Top-5 (``test/<set>/acc5``, ``test/ood_avg/acc5``, kept in
        ``test_results_top5``) is logged for sets with more than five classes; the
        OOD average only when every OOD set has one.

        Also keeps the number of images scored per set in ``test_counts`` (the
        results table's "Images" column).
        """
        self.test_counts = {
            s.name: int(self.trainer.strategy.reduce(_scored(metric), reduce_op="sum"))
            for s, metric in zip(self.test_eval_sets, self.test_accuracies, strict=True)
        }
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
        self.test_results_top5 = top5_results(self.test_eval_sets, list(self.test_accuracies))
        if id_names and len(results) > 1:
            avg = top_k_average(self.test_results_top5, list(results), id_names[0])
            if not math.isnan(avg):
                self.test_results_top5[OOD_AVG] = avg
        for name, value in self.test_results_top5.items():
            self.log(f"test/{name}/acc5", value, add_dataloader_idx=False)

    #: Classes ranked by :meth:`predict_step` (``cfmask predict --predictions.top_k``).
    predict_top_k: int = 5

    def predict_step(
        self, batch: Sequence[Tensor] | Tensor | None, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor] | None:
        """Class probabilities ``(B, K)`` and the top-k classes of a batch of images.

        Args:
            batch: ``images`` or ``(images, targets, ...)`` with ``(B, C, H, W)`` images.
            batch_idx: Index of the batch.
            dataloader_idx: Index of the loader.

        Returns:
            ``probs``, ``top_k_probs``, ``top_k_indices`` and, when the batch has
            labels, ``targets`` (see :func:`cfmask.training.prediction.predict_outputs`);
            ``None`` when every image of the batch was skipped as unreadable.
        """
        if batch is None:
            return None
        images = batch if isinstance(batch, Tensor) else batch[0]
        return predict_outputs(self.student(images), batch, self.predict_top_k)

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


def _scored(metric: nn.Module) -> Tensor:
    """The number of images a :class:`~cfmask.evaluation.accuracy.SubsetAccuracy` has seen."""
    total: Tensor = metric.total  # type: ignore[assignment]
    return total.detach().clone()


def _require_file(path: str, what: str) -> None:
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(
            f"{what} checkpoint not found: {path}. Pass the path of a cfmask .ckpt "
            "or a state dict saved with torch.save(model.state_dict(), path)."
        )

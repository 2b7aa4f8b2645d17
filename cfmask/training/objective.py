"""The training objective as a plain :class:`torch.nn.Module`.

:class:`CounterfactualObjective` computes the loss of Xiao et al., *Masked Images
Are Counterfactual Samples for Robust Fine-tuning* (CVPR 2023, arXiv:2303.03052,
Eq. 2) for one batch::

    L = CE(g(f(x)), y) + beta * MSE(f(x_cf), f_0(x_cf))

where ``x_cf`` is built from ``x`` by a :class:`~cfmask.masking.Masker` (which
patches, possibly guided by a :class:`~cfmask.relevance.RelevanceMap` computed on
the current student) and a :class:`~cfmask.masking.Refiller` (what to put there),
and ``f_0`` is a frozen copy of the pre-trained model. Any number of
:class:`~cfmask.losses.DistillationLoss` terms can be combined, each with its own
teacher, which covers the paper's baselines (vanilla fine-tuning: no term; KD and
WiSE-KD: a logit term on clean images) and its Fig. 6 integration (feature
distillation on ``x_cf`` plus KD from a WiSE-FT teacher on ``x``).

The module knows nothing about Lightning: it takes a batch and returns an
:class:`ObjectiveResult`. :class:`~cfmask.CounterfactualFineTuner` wraps it with the
optimiser, the schedule, logging and evaluation; benchmarks and tests call it
directly.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfmask.backbones.base import VisionBackbone
from cfmask.backbones.state_dicts import check_compatible, read_model_weights
from cfmask.functional.patches import check_object_masks, patch_coverage
from cfmask.losses import DistillationLoss, FeatureDistillationLoss
from cfmask.masking.base import Counterfactual, Masker, Refiller
from cfmask.masking.refillers import SingleImageRefiller
from cfmask.relevance.attention import AttentionGradRelevance
from cfmask.relevance.base import RelevanceMap

__all__ = (
    "INITIAL_TEACHER",
    "CounterfactualObjective",
    "ObjectiveResult",
    "has_stochastic_layers",
    "load_weights_into",
    "teacher_key",
)

INITIAL_TEACHER = "initial"
"""Key of the frozen copy of the student's initial weights in ``teachers``."""

RelevanceSource = Literal["student", "teacher"]


def teacher_key(source: str | None) -> str:
    """Key under which a distillation term's teacher is stored in ``teachers``.

    Args:
        source: The term's ``teacher``: ``None`` for the initial model, or the path
            of a checkpoint.

    Returns:
        :data:`INITIAL_TEACHER` for ``None``, else ``"ckpt_"`` plus the path with every
        character outside ``[0-9A-Za-z_]`` replaced by ``_`` (a valid module name).

    Example:
        >>> teacher_key(None), teacher_key("runs/wise.pt")
        ('initial', 'ckpt_runs_wise_pt')
    """
    if source is None:
        return INITIAL_TEACHER
    return "ckpt_" + re.sub(r"[^0-9A-Za-z_]", "_", source)


def load_weights_into(module: VisionBackbone, path: str, what: str) -> None:
    """Load a checkpoint's model weights into ``module``, refusing a mismatch.

    Args:
        module: The backbone to load into.
        path: A cfmask ``.ckpt`` or a ``torch.save``-d state dict.
        what: What the weights are for, used in error messages (``"teacher"``).

    Raises:
        FileNotFoundError: When ``path`` is not a file.
        ValueError: When the weights do not fit ``module``.
    """
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(
            f"{what} checkpoint not found: {path}. Pass the path of a cfmask .ckpt "
            "or a state dict saved with torch.save(model.state_dict(), path)."
        )
    weights = read_model_weights(path)
    check_compatible(module.state_dict(), weights, f"{what} checkpoint {path}")
    module.load_state_dict(weights)


def has_stochastic_layers(module: nn.Module) -> bool:
    """Whether ``module`` has layers whose train-mode output differs from eval mode.

    Dropout with ``p > 0``, stochastic depth (timm ``DropPath``) with a positive
    rate, batch norm, patch dropout with a positive rate (timm ``PatchDropout`` /
    ``PatchDropoutWithIndices`` from ``patch_drop_rate``, open_clip ``PatchDropout``
    from ``patch_dropout``), and rotary position embeddings with train-time coordinate
    augmentation (timm's ``aug_active`` flag, random shift/jitter/rescale).

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
        kind = type(m).__name__
        if kind == "DropPath" and float(getattr(m, "drop_prob", 0.0)) > 0:
            return True
        if kind.startswith("PatchDropout") and float(getattr(m, "prob", 0.0)) > 0:
            return True
        if bool(getattr(m, "aug_active", False)):
            return True
    return False


@dataclass(frozen=True)
class ObjectiveResult:
    """Everything one evaluation of the objective produced for a batch.

    Attributes:
        loss: ``()`` float32 total, ``loss_ce + loss_distill``; differentiable.
        loss_ce: ``()`` float32 cross-entropy of the clean-batch logits.
        loss_distill: ``()`` float32 sum of the weighted distillation terms (0 when
            there is none).
        distill_terms: One ``()`` float32 weighted loss per distillation term, in the
            order of :attr:`CounterfactualObjective.distillation`; empty for vanilla
            fine-tuning.
        logits: ``(B, K)`` student logits of the clean batch ``x``.
        mask: ``(B, N)`` bool patch mask (``True`` = replaced, row-major over the
            patch grid), or ``None`` when no mask was drawn (no masker, or no term
            on counterfactual inputs).
        mask_fraction: ``()`` float32 fraction of masked patches over the batch,
            ``mask.float().mean()``; ``None`` when ``mask`` is ``None``.
        counterfactual: The :class:`~cfmask.masking.Counterfactual` batch the
            counterfactual terms used (its ``images`` are ``x`` itself without a
            masker), or ``None`` when no term takes counterfactual inputs.
    """

    loss: Tensor
    loss_ce: Tensor
    loss_distill: Tensor
    distill_terms: tuple[Tensor, ...]
    logits: Tensor
    mask: Tensor | None
    mask_fraction: Tensor | None
    counterfactual: Counterfactual | None


class CounterfactualObjective(nn.Module):
    """Cross-entropy plus distillation on counterfactual views (paper Eq. 2).

    Owns the student, the frozen teachers (one per distinct ``teacher`` source of the
    distillation terms), the relevance map, the masker, the refiller and the
    distillation terms. Calling it on ``(images, targets)`` returns an
    :class:`ObjectiveResult`.

    Args:
        student: The classifier being fine-tuned. Teachers are deep copies of it
            taken here, so load initial weights into it before building the objective.
        masker: Chooses the patches to replace; ``None`` means ``x_cf = x`` (the
            paper's "no masking" row of Table 1).
        refiller: Builds ``x_cf``; defaults to
            :class:`~cfmask.masking.SingleImageRefiller` when a masker is given.
        relevance: Patch relevance for maskers that need it; defaults to
            :class:`~cfmask.relevance.AttentionGradRelevance` (the reference's CAM).
        distillation: Distillation terms added to the cross-entropy. ``None`` gives
            ``[FeatureDistillationLoss(weight=30)]`` (the paper's method); ``[]``
            gives vanilla fine-tuning.
        relevance_source: Model on which relevance is computed: ``"student"`` (the
            current model, as the reference does) or ``"teacher"`` (the initial model).
        fuse_student_passes: Run the student on ``[x; x_cf]`` as one batch when both
            passes are plain pixel inputs (same result, fewer kernel launches).
        share_relevance_pass: Take the clean batch's features and logits from the
            relevance pass instead of a second forward pass on ``x`` when that gives
            the same function (see :meth:`can_share_relevance_pass`).

    Attributes:
        student: The fine-tuned backbone.
        teachers: Frozen backbones keyed by :func:`teacher_key`; always in eval mode.
        distillation: The distillation terms.
        masker: The masker or ``None``.
        refiller: The refiller or ``None``.
        relevance: The relevance map or ``None``.

    Raises:
        ValueError: For an unknown ``relevance_source``, or a refiller that hides patch
            tokens (:attr:`~cfmask.masking.Refiller.hides_tokens`) with a backbone that
            cannot hide them.

    Example:
        >>> import torch
        >>> from cfmask.backbones import TimmViT
        >>> from cfmask.masking import ObjectMasker
        >>> objective = CounterfactualObjective(
        ...     TimmViT("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8,
        ...             model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2}),
        ...     masker=ObjectMasker(threshold=0.3),
        ... )
        >>> out = objective(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
        >>> out.logits.shape, out.mask.shape, len(out.distill_terms)
        (torch.Size([4, 3]), torch.Size([4, 16]), 1)
    """

    def __init__(
        self,
        student: VisionBackbone,
        masker: Masker | None = None,
        refiller: Refiller | None = None,
        relevance: RelevanceMap | None = None,
        distillation: Sequence[DistillationLoss] | None = None,
        *,
        relevance_source: RelevanceSource = "student",
        fuse_student_passes: bool = True,
        share_relevance_pass: bool = True,
    ) -> None:
        super().__init__()
        if relevance_source not in ("student", "teacher"):
            raise ValueError(
                f"relevance_source must be 'student' or 'teacher', got {relevance_source!r}"
            )
        if masker is not None:
            if refiller is None:
                refiller = SingleImageRefiller()
            if relevance is None and masker.requires_relevance:
                relevance = AttentionGradRelevance()
        if distillation is None:
            distillation = [FeatureDistillationLoss()]
        if refiller is not None and refiller.hides_tokens and not student.supports_token_hiding:
            raise ValueError(
                f"{type(refiller).__name__} hides patch tokens, which "
                f"{type(student).__name__} cannot do for this model (a relative position "
                "bias over the full patch grid, as in BEiT and vit_relpos); use a pixel "
                "refiller such as SingleImageRefiller or MultiImageRefiller "
                "(docs/architectures.md lists what each family supports)"
            )

        self.relevance_source: RelevanceSource = relevance_source
        self.fuse_student_passes = fuse_student_passes
        self.share_relevance_pass = share_relevance_pass
        self.student = student
        self.masker = masker
        self.refiller = refiller
        self.relevance = relevance
        self.distillation = nn.ModuleList(distillation)
        self.teachers = nn.ModuleDict()
        for term in distillation:
            key = teacher_key(term.teacher)
            if key not in self.teachers:
                self.teachers[key] = self._build_teacher(term.teacher)
        if relevance_source == "teacher" and INITIAL_TEACHER not in self.teachers:
            self.teachers[INITIAL_TEACHER] = self._build_teacher(None)

    def _build_teacher(self, source: str | None) -> VisionBackbone:
        teacher = copy.deepcopy(self.student)
        # A head built later from the datamodule's class names (OpenCLIPViT with
        # class_names="datamodule") gets its source once the head exists
        # (cfmask.training.head_setup.build_deferred_heads, from CounterfactualFineTuner.setup).
        if source is not None and not teacher.needs_class_names:
            load_weights_into(teacher, source, "teacher")
        teacher.requires_grad_(False)
        teacher.eval()
        return teacher

    def train(self, mode: bool = True) -> CounterfactualObjective:
        """Set train mode on the student; teachers always stay in eval mode."""
        super().train(mode)
        self.teachers.eval()
        return self

    @property
    def terms(self) -> list[DistillationLoss]:
        """The distillation terms as a typed list (same objects as :attr:`distillation`)."""
        return list(self.distillation)  # type: ignore[arg-type]

    # --------------------------------------------------------- counterfactual
    def make_counterfactual(
        self,
        images: Tensor,
        targets: Tensor,
        scores: Tensor | None = None,
        object_masks: Tensor | None = None,
    ) -> tuple[Counterfactual, Tensor | None]:
        """Build the counterfactual view of a batch (detached).

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` ground-truth class indices.
            scores: Precomputed ``(B, N)`` relevance; computed here when the masker
                needs it and none is given.
            object_masks: ``(B, H, W)`` ground-truth object masks (bool or float in
                ``[0, 1]``), required by maskers that declare
                ``requires_object_masks`` (e.g.
                :class:`~cfmask.masking.SegmentationMasker`), which then receive
                their per-patch coverage as ``scores``; ignored by other maskers.

        Returns:
            The :class:`~cfmask.masking.Counterfactual` (``x_cf = x`` without a
            masker) and the ``(B, N)`` bool patch mask it was built from (``None``
            without a masker).

        Raises:
            ValueError: When the batch is smaller than the refiller needs, the
                masker needs relevance and none is configured, or the masker needs
                object masks and none (or masks of the wrong shape) are given.
        """
        if self.masker is None or self.refiller is None:
            return Counterfactual(images=images), None
        batch_size = images.shape[0]
        if batch_size < self.refiller.min_batch_size:
            raise ValueError(
                f"{type(self.refiller).__name__} takes patches from other images and "
                f"needs at least {self.refiller.min_batch_size} images per batch, got "
                f"{batch_size}. Use a larger batch size and drop_last=True in the "
                "training loader."
            )
        if self.masker.requires_object_masks:
            scores = self._object_coverage(images, object_masks)
        elif scores is None and self.masker.requires_relevance:
            scores = self.relevance_scores(images, targets)
        mask: Tensor = self.masker(scores, batch_size, self.student.grid_size, images.device)
        cf: Counterfactual = self.refiller(images.detach(), mask, self.student.patch_size)
        return cf, mask

    def relevance_scores(
        self, images: Tensor, targets: Tensor, relevance: RelevanceMap | None = None
    ) -> Tensor:
        """Relevance of each patch for the target class, from the configured source.

        The source is the student, or the frozen initial teacher when
        ``relevance_source="teacher"``, as for the masks of
        :meth:`make_counterfactual`.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` ground-truth class indices.
            relevance: Relevance map to use instead of the configured one (lets a
                monitor measure CAM masks in a run that masks without them).

        Returns:
            ``(B, N)`` non-negative relevance scores.

        Raises:
            ValueError: When neither ``relevance`` nor a configured map is available.
        """
        relevance = relevance if relevance is not None else self._require_relevance()
        source = (
            self.student if self.relevance_source == "student" else self.teachers[INITIAL_TEACHER]
        )
        scores: Tensor = relevance(source, images, targets)
        return scores

    def _object_coverage(self, images: Tensor, object_masks: Tensor | None) -> Tensor:
        """``(B, N)`` object coverage of each patch, for maskers that need object masks."""
        owner = type(self.masker).__name__
        if object_masks is None:
            raise ValueError(
                f"{owner} needs ground-truth object masks but the batch carries none; use "
                "a datamodule whose batches are (images, targets, masks) with (B, H, W) "
                "masks, or pass object_masks= to the objective."
            )
        check_object_masks(images, object_masks, owner)
        return patch_coverage(object_masks.to(images.device), self.student.patch_size)

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
            self.share_relevance_pass
            and self.masker is not None
            and self.masker.requires_relevance
            and self.relevance_source == "student"
            and not (self.student.training and has_stochastic_layers(self.student))
        )

    # ------------------------------------------------------------------ loss
    def _student_features(self, images: Tensor, cf: Counterfactual) -> tuple[Tensor, Tensor]:
        """Student features on ``x`` and on ``x_cf`` (one batched pass where possible)."""
        plain_cf = cf.keep_index is None and cf.key_mask is None
        if cf.images is images and plain_cf:
            feats = self.student.forward_features(images)
            return feats, feats
        if plain_cf and self.fuse_student_passes:
            both = self.student.forward_features(torch.cat([images, cf.images]))
            feats, feats_cf = torch.split(both, images.shape[0])
            return feats, feats_cf
        feats = self.student.forward_features(images)
        return feats, self._student_cf_features(cf)

    def _student_cf_features(self, cf: Counterfactual) -> Tensor:
        return self.student.forward_features(
            cf.images, keep_index=cf.keep_index, key_mask=cf.key_mask
        )

    def forward(
        self,
        images: Tensor,
        targets: Tensor,
        object_masks: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> ObjectiveResult:
        """Compute every term of the objective for one batch.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            targets: ``(B,)`` class indices.
            object_masks: Optional ``(B, H, W)`` ground-truth object masks, needed by
                maskers that declare ``requires_object_masks`` (see
                :meth:`make_counterfactual`).
            scores: Optional precomputed ``(B, N)`` relevance for the masker (e.g. the
                cached teacher map, :mod:`cfmask.training.teacher_relevance`); no relevance pass
                runs then.

        Returns:
            The :class:`ObjectiveResult`; ``loss`` carries the gradient.

        Raises:
            ValueError: For images the student cannot take, a batch too small for
                the refiller, or missing object masks for a masker that needs them.
        """
        self.student.check_image_size(images)
        terms = self.terms
        feats_cf: Tensor | None = None
        cf: Counterfactual | None
        mask: Tensor | None = None
        if not any(t.inputs == "counterfactual" for t in terms):
            cf = None
            feats = self.student.forward_features(images)
            logits = self.student.forward_head(feats)
        elif scores is None and self.can_share_relevance_pass():
            shared = self._require_relevance().forward_with_outputs(self.student, images, targets)
            feats, logits = shared.features, shared.logits
            cf, mask = self.make_counterfactual(
                images, targets, scores=shared.scores, object_masks=object_masks
            )
            feats_cf = self._student_cf_features(cf)
        else:
            cf, mask = self.make_counterfactual(
                images, targets, scores=scores, object_masks=object_masks
            )
            feats, feats_cf = self._student_features(images, cf)
            logits = self.student.forward_head(feats)
        loss_ce = F.cross_entropy(logits.float(), targets)
        loss_distill = logits.new_zeros((), dtype=torch.float32)
        distill_terms: list[Tensor] = []
        for term in terms:
            value = self._distill_term(term, images, cf, feats, logits, feats_cf)
            distill_terms.append(value)
            loss_distill = loss_distill + value
        return ObjectiveResult(
            loss=loss_ce + loss_distill,
            loss_ce=loss_ce,
            loss_distill=loss_distill,
            distill_terms=tuple(distill_terms),
            logits=logits,
            mask=mask,
            mask_fraction=None if mask is None else mask.float().mean(),
            counterfactual=cf,
        )

    def _distill_term(
        self,
        term: DistillationLoss,
        images: Tensor,
        cf: Counterfactual | None,
        feats: Tensor,
        logits: Tensor,
        feats_cf: Tensor | None,
    ) -> Tensor:
        teacher: VisionBackbone = self.teachers[teacher_key(term.teacher)]  # type: ignore[assignment]
        on_cf = term.inputs == "counterfactual"
        with torch.no_grad():
            if on_cf:
                assert cf is not None
                t_feats = teacher.forward_features(
                    cf.images, keep_index=cf.keep_index, key_mask=cf.key_mask
                )
            else:
                t_feats = teacher.forward_features(images)
            t_out = t_feats if term.target == "features" else teacher.forward_head(t_feats)
        student_feats = feats_cf if on_cf else feats
        assert student_feats is not None
        if term.target == "features":
            s_out = student_feats
        else:
            s_out = logits if not on_cf else self.student.forward_head(student_feats)
        result: Tensor = term(s_out, t_out)
        return result

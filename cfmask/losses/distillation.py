"""Distillation losses between the fine-tuned model and a frozen teacher.

The method's objective (Xiao et al., CVPR 2023, arXiv:2303.03052, Eq. 2) is
``L = CE(g(f(x)), y) + beta * MSE(f(x_cf), f_0(x_cf))``; the WiSE-KD
integration (appendix, Eq. 3) adds ``gamma * KL`` between the logits of the
student and of a WiSE-FT teacher on clean images. Each term here is a
:class:`DistillationLoss` that says what it compares (features or logits), on
which input (the counterfactual batch or the clean one) and against which
teacher, so a fine-tuner can combine several terms, each with its own teacher.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor

from cfmask.core.components import Component
from cfmask.core.validation import check_number

__all__ = (
    "DistillationLoss",
    "FeatureDistillationLoss",
    "LogitDistillationLoss",
    "feature_distillation",
    "logit_distillation",
)

DistillInputs = Literal["counterfactual", "clean"]


def feature_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error over every element of ``(B, D)`` features.

    This is ``torch.nn.MSELoss()`` with its default ``mean`` reduction, i.e. the
    sum of squared differences divided by ``B * D``, as in the reference code.

    Args:
        student: ``(B, D)`` student features.
        teacher: ``(B, D)`` teacher features (no gradient needed).

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> feature_distillation(torch.ones(2, 3), torch.zeros(2, 3))
        tensor(1.)
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student features {tuple(student.shape)} and teacher features "
            f"{tuple(teacher.shape)} differ in shape; both models must share the "
            "backbone architecture."
        )
    return F.mse_loss(student.float(), teacher.float())


def logit_distillation(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton-style knowledge distillation on logits.

    ``T**2 * KL(softmax(teacher / T) || softmax(student / T))`` summed over
    classes and averaged over the batch (``batchmean``).

    Args:
        student: ``(B, K)`` student logits.
        teacher: ``(B, K)`` teacher logits.
        temperature: Softening temperature ``T > 0``.

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> logit_distillation(torch.zeros(2, 4), torch.zeros(2, 4), 10.0)
        tensor(0.)
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits "
            f"{tuple(teacher.shape)} differ in shape; the teacher must have the same "
            "classes as the student."
        )
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    p_teacher = F.softmax(teacher.float() / t, dim=-1)
    kl = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    return kl * t * t


def _check_common(weight: float, inputs: str) -> None:
    check_number("distillation weight", weight, low=0)
    if inputs not in ("counterfactual", "clean"):
        raise ValueError(f"inputs must be 'counterfactual' or 'clean', got {inputs!r}")


class DistillationLoss(Component):
    """One weighted distillation term of the fine-tuning objective.

    Attributes:
        target: What the term compares, ``"features"`` (``f``) or ``"logits"`` (``g(f)``).
        weight: Multiplier of the term (``beta`` or ``gamma`` in the paper).
        inputs: ``"counterfactual"`` (``x_cf``) or ``"clean"`` (``x``).
        teacher: ``None`` for a frozen copy of the initial (pre-trained) model, or
            the path of a checkpoint whose weights form the teacher (a cfmask
            ``.ckpt``, or a backbone state dict), e.g. a WiSE-FT model for WiSE-KD.
    """

    target: ClassVar[Literal["features", "logits"]]

    def __init__(self, weight: float, inputs: DistillInputs, teacher: str | None) -> None:
        super().__init__()
        _check_common(weight, inputs)
        self.weight = weight
        self.inputs = inputs
        self.teacher = teacher

    @abstractmethod
    def unweighted(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Return the term before multiplication by :attr:`weight`."""

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Return ``weight * unweighted(student, teacher)``.

        Args:
            student: ``(B, D)`` features or ``(B, K)`` logits of the student.
            teacher: The teacher's tensor of the same shape.

        Returns:
            Scalar weighted loss.
        """
        return self.weight * self.unweighted(student, teacher)


class FeatureDistillationLoss(DistillationLoss):
    """MSE between student and teacher features (the paper's ``beta`` term).

    Args:
        weight: ``beta``; 30 in the paper for CLIP features.
        inputs: Which images both models see; ``"counterfactual"`` for the
            method, ``"clean"`` for plain feature distillation.
        teacher: See :class:`DistillationLoss`.

    Example:
        >>> import torch
        >>> loss = FeatureDistillationLoss(weight=30.0)
        >>> loss(torch.ones(4, 8), torch.zeros(4, 8))
        tensor(30.)
    """

    target: ClassVar[Literal["features", "logits"]] = "features"

    def __init__(
        self,
        weight: float = 30.0,
        inputs: DistillInputs = "counterfactual",
        teacher: str | None = None,
    ) -> None:
        super().__init__(weight=weight, inputs=inputs, teacher=teacher)

    def unweighted(self, student: Tensor, teacher: Tensor) -> Tensor:
        """MSE over ``B * D`` elements."""
        return feature_distillation(student, teacher)


class LogitDistillationLoss(DistillationLoss):
    """Knowledge distillation on logits (KD and WiSE-KD baselines).

    Args:
        weight: ``gamma``; 1 in the paper's WiSE-KD (the reference code's flag
            defaults to 30, which is not what the paper reports).
        temperature: Softening temperature (10 in the paper).
        inputs: Which images both models see; ``"clean"`` for KD and WiSE-KD.
        teacher: See :class:`DistillationLoss`; for WiSE-KD, a WiSE-FT checkpoint.

    Example:
        >>> import torch
        >>> LogitDistillationLoss()(torch.zeros(2, 5), torch.zeros(2, 5))
        tensor(0.)
    """

    target: ClassVar[Literal["features", "logits"]] = "logits"

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 10.0,
        inputs: DistillInputs = "clean",
        teacher: str | None = None,
    ) -> None:
        check_number("temperature", temperature, low=0, low_open=True)
        super().__init__(weight=weight, inputs=inputs, teacher=teacher)
        self.temperature = temperature

    def unweighted(self, student: Tensor, teacher: Tensor) -> Tensor:
        """``T**2 * KL`` with ``batchmean`` reduction."""
        return logit_distillation(student, teacher, self.temperature)

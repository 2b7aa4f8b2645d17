"""Build deferred zero-shot heads from a datamodule's class names inside a Trainer run.

A backbone built with ``class_names="datamodule"`` (see
:class:`~cfmask.backbones.OpenCLIPViT`) has no head until the datamodule's class
names are known. When ``fit``, ``validate`` or ``test`` starts,
:class:`~cfmask.CounterfactualFineTuner` calls :func:`build_deferred_heads`, which

1. reads the class names from the datamodule (:func:`datamodule_class_names`),
2. runs the text tower once, on global rank 0 and on its accelerator, and
   broadcasts the ``(K, D)`` head weight to the other ranks
   (:func:`shared_zero_shot_weight`), as the zero-shot head of WiSE-FT and of Xiao et
   al. (CVPR 2023, arXiv:2303.03052) is built from the text tower,
3. gives that head to the student and every teacher, and then loads the checkpoints
   that had to wait for the head: the student's ``init_weights`` and the teachers'
   sources.

The module knows the objective and the running Trainer; it knows nothing of the
LightningModule that calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from cfmask.backbones.base import VisionBackbone
from cfmask.losses import DistillationLoss
from cfmask.training.objective import (
    INITIAL_TEACHER,
    CounterfactualObjective,
    load_weights_into,
    teacher_key,
)

if TYPE_CHECKING:
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import Strategy

__all__ = (
    "build_deferred_heads",
    "check_strategy_runs_setup",
    "datamodule_class_names",
    "shared_zero_shot_weight",
    "with_saved_class_names",
)


def datamodule_class_names(datamodule: Any) -> list[str]:
    """Return the datamodule's ``class_names`` as strings, in class-index order.

    Args:
        datamodule: The Trainer's datamodule (or ``None`` when there is none).

    Returns:
        The ``K`` class names.

    Raises:
        ValueError: If the datamodule has no (or empty) ``class_names``.
    """
    names = getattr(datamodule, "class_names", None)
    if not names:
        raise ValueError(
            "the backbone takes its class names from the datamodule (class_names: "
            f"datamodule) but {type(datamodule).__name__} has no class_names; list "
            "them in the backbone's class_names or use a datamodule that has them "
            "(ImageFolderDataModule, ImageNetOODDataModule)."
        )
    return [str(n) for n in names]


def check_strategy_runs_setup(strategy: Strategy) -> None:
    """Refuse strategies whose main process never sees the datamodule.

    Spawned or forked workers (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) build
    the head in the workers only; the main process, which receives the trained
    weights back, would keep a model without a head.

    Args:
        strategy: The Trainer's strategy.

    Raises:
        ValueError: If the strategy launches its workers by spawning or forking.
    """
    if type(getattr(strategy, "launcher", None)).__name__ == "_MultiProcessingLauncher":
        raise ValueError(
            f"class_names: datamodule cannot be used with the {type(strategy).__name__} "
            "strategy's spawned or forked workers (ddp_spawn, ddp_fork, ddp_notebook): "
            "the main process, which gets the trained weights back, never sees the "
            "datamodule. Use strategy: ddp (every process runs setup) or list the class "
            "names in the backbone's class_names."
        )


def shared_zero_shot_weight(
    backbone: VisionBackbone, class_names: Sequence[str], trainer: Trainer
) -> Tensor:
    """Compute the ``(K, D)`` head weight on global rank 0 and broadcast it.

    The text tower runs once, on rank 0's device with a progress bar; every other
    rank receives the same weight, so all ranks start from identical heads.

    Args:
        backbone: A backbone whose head waits for class names.
        class_names: The ``K`` class names.
        trainer: The running Trainer (its global rank, its strategy's root device
            and broadcast).

    Returns:
        The ``(K, D)`` head weight, identical on every rank.
    """
    strategy = trainer.strategy
    weight: Tensor | None = None
    if trainer.is_global_zero:
        weight = backbone.zero_shot_weight(
            list(class_names), device=strategy.root_device, progress=True
        )
    weight = strategy.broadcast(weight, src=0)
    assert weight is not None
    return weight


def build_deferred_heads(
    objective: CounterfactualObjective,
    datamodule: Any,
    trainer: Trainer,
    init_weights: str | None,
) -> bool:
    """Build the student's and teachers' deferred heads, then load the waiting weights.

    Does nothing when the student's head does not wait for class names. Otherwise
    the head weight comes from :func:`shared_zero_shot_weight`, every backbone gets
    it with :meth:`~cfmask.backbones.base.VisionBackbone.set_class_names`, then
    ``init_weights`` is loaded into the student (and copied to the initial teacher)
    and each distillation term's teacher source into its teacher. Teachers end
    frozen and in eval mode.

    Args:
        objective: The objective owning the student and teachers.
        datamodule: The Trainer's datamodule, source of the class names.
        trainer: The running Trainer.
        init_weights: Checkpoint whose model weights initialise the student, or
            ``None``.

    Returns:
        ``True`` when heads were built (the student's config changed), else ``False``.

    Raises:
        ValueError: If the datamodule has no class names or the strategy spawns its
            workers (see :func:`check_strategy_runs_setup`).
    """
    student = objective.student
    if not student.needs_class_names:
        return False
    names = datamodule_class_names(datamodule)
    check_strategy_runs_setup(trainer.strategy)
    weight = shared_zero_shot_weight(student, names, trainer)
    teachers = objective.teachers
    backbones: list[VisionBackbone] = [student, *teachers.values()]  # type: ignore[list-item]
    for backbone in backbones:
        backbone.set_class_names(names, weight)
    if init_weights is not None:
        load_weights_into(student, init_weights, "init_weights")
        if INITIAL_TEACHER in teachers:
            teachers[INITIAL_TEACHER].load_state_dict(student.state_dict())
    terms: Sequence[DistillationLoss] = list(objective.distillation)  # type: ignore[arg-type]
    for term in terms:
        if term.teacher is not None:
            teacher: VisionBackbone = teachers[teacher_key(term.teacher)]  # type: ignore[assignment]
            load_weights_into(teacher, term.teacher, "teacher")
    teachers.requires_grad_(False)
    teachers.eval()
    return True


def with_saved_class_names(
    configured: Mapping[str, Any], saved: Mapping[str, Any]
) -> dict[str, Any]:
    """A backbone config whose ``class_names="datamodule"`` takes the saved run's names.

    A run configured with ``class_names: datamodule`` stores the names it resolved;
    a later run with the same configuration resolves them again from its datamodule
    in ``setup`` (and :meth:`~cfmask.CounterfactualFineTuner.on_load_checkpoint` then refuses
    a checkpoint whose names differ). Comparing the configurations before that, the
    two count as the same backbone.

    Args:
        configured: The ``{"class_path", "init_args"}`` of the configuration.
        saved: The one stored in a checkpoint.

    Returns:
        ``configured`` with the saved ``class_names`` list in place of
        ``"datamodule"``; otherwise an unchanged copy.
    """
    out = dict(configured)
    mine, theirs = out.get("init_args"), saved.get("init_args")
    if (
        isinstance(mine, Mapping)
        and isinstance(theirs, Mapping)
        and mine.get("class_names") == "datamodule"
        and isinstance(theirs.get("class_names"), list | tuple)
    ):
        out["init_args"] = {**mine, "class_names": list(theirs["class_names"])}
    return out

"""Checks of a run's options: valid values, and whether the run still matches its recipe.

The paper's recipes fix a global batch (512, Xiao et al., CVPR 2023,
arXiv:2303.03052, Sec. 4); :func:`global_batch_mismatch` says how a run differs
from it. :func:`without_memory_options` drops the backbone options that change
memory use but not the model, so a run can be compared with a checkpoint, and
:func:`validate_options` refuses bad optimisation options by name. The
fine-tuner and the command line both use them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.strategies import (
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    Strategy,
)

from cfmask.core.validation import check_number

__all__ = (
    "check_supported_strategy",
    "global_batch_mismatch",
    "validate_options",
    "without_memory_options",
)


def global_batch_mismatch(
    expected: int, per_device: int | None, world_size: int, accumulate: int = 1
) -> str | None:
    """Explain how a run's global batch differs from the one its recipe was written for.

    The global batch is ``per_device * world_size * accumulate``; the paper's recipes
    use 512 (Xiao et al., CVPR 2023, arXiv:2303.03052, Sec. 4, "Implementation
    details"), and their learning rate, warm-up and step count assume it.

    Args:
        expected: The recipe's global batch.
        per_device: The datamodule's per-device ``batch_size``; ``None`` when unknown.
        world_size: Number of processes (devices x nodes).
        accumulate: Gradient-accumulation factor.

    Returns:
        ``None`` when the global batch matches, otherwise a message naming both
        numbers and the fix.

    Example:
        >>> global_batch_mismatch(512, 128, 4) is None
        True
        >>> global_batch_mismatch(512, 512, 4)[:60]
        'the recipe was written for a global batch of 512, but this r'
    """
    if per_device is None:
        return (
            f"the recipe was written for a global batch of {expected}, but the datamodule "
            "has no batch_size attribute, so the global batch of this run cannot be checked."
        )
    actual = int(per_device) * world_size * accumulate
    if actual == expected:
        return None
    return (
        f"the recipe was written for a global batch of {expected}, but this run's global "
        f"batch is {actual} ({per_device} per device x {world_size} process(es) x "
        f"{accumulate} accumulation step(s)); the learning rate, warm-up and number of steps "
        f"no longer match the recipe. Set data.init_args.batch_size to "
        f"{expected} / (devices x nodes x accumulation) or trainer.devices to match."
    )


_MEMORY_OPTIONS = ("grad_checkpointing",)


def without_memory_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """A backbone config without options that change memory use but not the weights.

    Used to compare a run's backbone with a checkpoint's: switching gradient
    checkpointing on or off is not a different model.

    Args:
        config: ``{"class_path": ..., "init_args": {...}}`` of a backbone.

    Returns:
        A copy whose ``init_args`` lack ``grad_checkpointing``.

    Example:
        >>> without_memory_options({"class_path": "TimmViT",
        ...     "init_args": {"depth": 2, "grad_checkpointing": True}})
        {'class_path': 'TimmViT', 'init_args': {'depth': 2}}
    """
    out = dict(config)
    init_args = out.get("init_args")
    if isinstance(init_args, Mapping):
        out["init_args"] = {k: v for k, v in init_args.items() if k not in _MEMORY_OPTIONS}
    return out


def validate_options(
    lr: float,
    weight_decay: float,
    betas: Sequence[float],
    schedule: str,
    warmup_steps: int,
    pct_start: float,
    gradient_clip_norm: float | None,
    relevance_source: str,
    trainable: str,
) -> None:
    """Refuse non-numbers, ``nan``, infinities and out-of-range values by name."""
    check_number("lr", lr, low=0, low_open=True)
    check_number("weight_decay", weight_decay, low=0)
    if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas must be two numbers (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        check_number(f"betas[{i}]", beta, low=0, high=1, high_open=True)
    if schedule not in ("warmup_cosine", "onecycle", "constant"):
        raise ValueError(
            f"unknown schedule {schedule!r}; choose 'warmup_cosine', 'onecycle' or 'constant'"
        )
    check_number("warmup_steps", warmup_steps, low=0, integer=True)
    check_number("pct_start", pct_start, low=0, high=1, low_open=True, high_open=True)
    if gradient_clip_norm is not None:
        check_number("gradient_clip_norm", gradient_clip_norm, low=0)
    if relevance_source not in ("student", "teacher", "cached_teacher"):
        raise ValueError(
            "relevance_source must be 'student', 'teacher' or 'cached_teacher', got "
            f"{relevance_source!r}"
        )
    if trainable not in ("all", "head"):
        raise ValueError(f"trainable must be 'all' or 'head', got {trainable!r}")


def check_supported_strategy(strategy: Strategy) -> None:
    """Refuse the sharded training strategies, which cfmask has not been verified with.

    Under FSDP, DeepSpeed or Lightning's model-parallel strategy the student's weights
    are sharded across ranks and gathered around each forward and backward. The step
    also runs the frozen teacher and takes, inside the forward, a gradient to the
    attention probabilities for the relevance map (Xiao et al., CVPR 2023, Sec. 3.2);
    neither has been run under sharding (the installed Lightning refuses FSDP on the
    CPU, and no GPU run has been made), so a fit with them is stopped before it starts.
    ViT-B and ViT-L fine-tuners fit on one GPU, so DDP is the strategy to use.

    Args:
        strategy: The Trainer's strategy.

    Raises:
        ValueError: For FSDP, DeepSpeed and model-parallel strategies, naming DDP.
    """
    sharded = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)
    if isinstance(strategy, sharded):
        raise ValueError(
            f"the {type(strategy).__name__} strategy shards the model, and cfmask's step "
            "(frozen teacher plus a relevance gradient taken inside the forward) has not "
            "been verified under sharding; use --trainer.strategy ddp (one full copy of "
            "the model per GPU), which is tested."
        )

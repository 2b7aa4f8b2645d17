"""Weight-space ensembles of cfmask checkpoints: WiSE-FT and uniform soups.

``cfmask wise`` and ``cfmask soup`` write new Lightning checkpoints whose
fine-tuned weights (``student.*``) are replaced by the ensemble, keeping the
hyper-parameters, so ``cfmask test --ckpt_path <file>`` evaluates them like any
other run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from cfmask.weights import (
    STUDENT_PREFIX,
    average_state_dicts,
    extract_prefixed,
    interpolate_state_dicts,
    read_checkpoint,
    read_model_weights,
)

__all__ = ("initial_weights", "soup_checkpoint", "wise_checkpoints")

_INITIAL_PREFIX = "teachers.initial."


def _lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    ckpt = read_checkpoint(path)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(
            f"{path} is not a cfmask Lightning checkpoint (no 'state_dict' and "
            "'hyper_parameters'); pass the .ckpt written by `cfmask fit`."
        )
    return ckpt


def initial_weights(checkpoint: dict[str, Any], zeroshot: str | Path | None) -> dict[str, Tensor]:
    """Find the zero-shot weights ``theta_0`` for a fine-tuned checkpoint.

    In order: the file given as ``zeroshot``; the frozen initial teacher stored in
    the checkpoint (runs with a distillation term keep it); otherwise the model is
    rebuilt from the checkpoint's hyper-parameters, which loads the pre-trained
    weights and builds the zero-shot head again.

    Args:
        checkpoint: A loaded cfmask Lightning checkpoint.
        zeroshot: Optional checkpoint or state dict of the zero-shot model.

    Returns:
        The zero-shot backbone state dict.
    """
    if zeroshot is not None:
        return read_model_weights(zeroshot)
    stored = extract_prefixed(checkpoint["state_dict"], _INITIAL_PREFIX)
    if stored:
        return stored
    from cfmask.finetuner import CounterfactualFineTuner

    hparams = dict(checkpoint["hyper_parameters"])
    hparams.pop("init_weights", None)
    instantiator = hparams.pop("_instantiator", "lightning.pytorch.cli.instantiate_module")
    if instantiator != "lightning.pytorch.cli.instantiate_module":
        raise ValueError(f"unsupported instantiator {instantiator!r} in checkpoint")
    from lightning.pytorch.cli import instantiate_module

    hparams["distillation"] = []
    model = instantiate_module(CounterfactualFineTuner, hparams)
    return dict(model.student.state_dict())


def _with_student(checkpoint: dict[str, Any], student: dict[str, Tensor]) -> dict[str, Any]:
    out = {k: v for k, v in checkpoint.items() if k not in ("optimizer_states", "lr_schedulers")}
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(STUDENT_PREFIX)}
    state.update({STUDENT_PREFIX + k: v for k, v in student.items()})
    out["state_dict"] = state
    return out


def wise_checkpoints(
    finetuned: str | Path,
    alphas: Sequence[float],
    output_dir: str | Path,
    zeroshot: str | Path | None = None,
) -> list[Path]:
    """Write one WiSE-FT checkpoint per ``alpha``.

    Args:
        finetuned: The fine-tuned cfmask checkpoint (``theta_1``).
        alphas: Mixing coefficients in ``[0, 1]``.
        output_dir: Folder for ``wise_alpha<alpha>.ckpt`` files.
        zeroshot: Optional zero-shot weights; see :func:`initial_weights`.

    Returns:
        The written paths, in the order of ``alphas``.
    """
    import torch

    ckpt = _lightning_checkpoint(finetuned)
    theta_1 = extract_prefixed(ckpt["state_dict"], STUDENT_PREFIX)
    theta_0 = initial_weights(ckpt, zeroshot)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for alpha in alphas:
        mixed = interpolate_state_dicts(theta_0, theta_1, float(alpha))
        path = out_dir / f"wise_alpha{float(alpha):.2f}.ckpt"
        torch.save(_with_student(ckpt, mixed), path)
        paths.append(path)
    return paths


def soup_checkpoint(checkpoints: Sequence[str | Path], output: str | Path) -> Path:
    """Write the uniform soup of several fine-tuned checkpoints.

    Args:
        checkpoints: Two or more cfmask checkpoints of the same backbone.
        output: Path of the soup checkpoint (the first checkpoint's
            hyper-parameters and teachers are kept).

    Returns:
        ``output`` as a :class:`~pathlib.Path`.
    """
    import torch

    loaded = [_lightning_checkpoint(p) for p in checkpoints]
    students = [extract_prefixed(c["state_dict"], STUDENT_PREFIX) for c in loaded]
    soup = average_state_dicts(students)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_with_student(loaded[0], soup), out)
    return out

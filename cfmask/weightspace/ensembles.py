"""Weight-space ensembles of cfmask checkpoints: WiSE-FT and uniform soups.

``cfmask wise`` and ``cfmask soup`` write new Lightning checkpoints whose
fine-tuned weights (``student.*``) are replaced by the ensemble, keeping the
hyper-parameters, so ``cfmask test --ckpt_path <file>`` evaluates them like any
other run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from cfmask.backbones.state_dicts import (
    STUDENT_PREFIX,
    average_state_dicts,
    extract_prefixed,
    interpolate_state_dicts,
    read_checkpoint,
    read_model_weights,
)
from cfmask.training.finetuner import CounterfactualFineTuner

__all__ = (
    "RandomInitError",
    "alpha_label",
    "check_alphas",
    "initial_weights",
    "soup_checkpoint",
    "wise_checkpoints",
    "wise_path",
)

_INITIAL_PREFIX = "teachers.initial."


class RandomInitError(ValueError):
    """``theta_0`` would be a fresh random initialisation, not a pre-trained model."""


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """Validate WiSE-FT mixing coefficients before anything is loaded or written.

    Args:
        alphas: One or more coefficients.

    Returns:
        The coefficients as floats (``-0.0`` normalised to ``0.0``), in the given order.

    Raises:
        ValueError: If the list is empty, a value is not a finite number in ``[0, 1]``,
            or a value is given twice.

    Example:
        >>> check_alphas([0, 0.5, 1])
        [0.0, 0.5, 1.0]
    """
    if len(alphas) == 0:
        raise ValueError("give at least one alpha (e.g. --alpha 0 0.5 1)")
    out: list[float] = []
    for value in alphas:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"alpha must be a number in [0, 1], got {value!r}")
        alpha = float(value) + 0.0
        if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"alpha must be in [0, 1] (0 = zero-shot, 1 = fine-tuned), got {value!r}; "
                "nothing was written."
            )
        if alpha in out:
            raise ValueError(f"alpha {alpha:g} is given twice; list each value once")
        out.append(alpha)
    return out


def alpha_label(alpha: float) -> str:
    """The shortest decimal text, with at least two decimals, that reads back as ``alpha``.

    Distinct coefficients always get distinct labels, so their files never collide.

    Args:
        alpha: A coefficient in ``[0, 1]``.

    Returns:
        ``"0.50"`` for 0.5, ``"0.12"`` for 0.12, ``"0.125"`` for 0.125.

    Example:
        >>> [alpha_label(a) for a in (0.0, 0.5, 0.12, 0.125, 1 / 3)]
        ['0.00', '0.50', '0.12', '0.125', '0.3333333333333333']
    """
    alpha = float(alpha) + 0.0
    for digits in range(2, 18):
        text = f"{alpha:.{digits}f}"
        if float(text) == alpha:
            return text
    return repr(alpha)


def wise_path(output_dir: str | Path, alpha: float) -> Path:
    """Path of the WiSE-FT checkpoint for ``alpha``: ``<output_dir>/wise_alpha<label>.ckpt``.

    Args:
        output_dir: Folder of the sweep.
        alpha: Mixing coefficient (see :func:`alpha_label`).

    Returns:
        The file path.
    """
    return Path(output_dir) / f"wise_alpha{alpha_label(alpha)}.ckpt"


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
    weights and builds the zero-shot head again. A rebuild is refused when the run
    had no pre-trained weights (its backbone's ``pretrained`` is empty, or, for a
    backbone without that argument, two builds under different seeds differ):
    ``theta_0`` would then be a fresh random initialisation.

    Args:
        checkpoint: A loaded cfmask Lightning checkpoint.
        zeroshot: Optional checkpoint or state dict of the zero-shot model.

    Returns:
        The zero-shot backbone state dict.

    Raises:
        RandomInitError: If ``theta_0`` could only be a random initialisation.
    """
    if zeroshot is not None:
        return read_model_weights(zeroshot)
    stored = extract_prefixed(checkpoint["state_dict"], _INITIAL_PREFIX)
    if stored:
        return stored
    hparams = dict(checkpoint["hyper_parameters"])
    backbone = hparams.get("backbone")
    init_args = backbone.get("init_args", {}) if isinstance(backbone, Mapping) else {}
    fix = (
        "Pass the zero-shot weights explicitly with --zeroshot FILE (zeroshot= in Python)"
        + (
            f", e.g. the run's init_weights {hparams['init_weights']!r}"
            if hparams.get("init_weights")
            else ""
        )
        + "."
    )
    if isinstance(init_args, Mapping) and "pretrained" in init_args:
        if not init_args["pretrained"]:
            raise RandomInitError(
                "this checkpoint stores no initial model and its backbone was built without "
                f"pre-trained weights (pretrained={init_args['pretrained']!r}), so rebuilding "
                "theta_0 would give a fresh random initialisation. " + fix
            )
        return _rebuild_student(hparams, seed=0)
    first = _rebuild_student(hparams, seed=0)
    second = _rebuild_student(hparams, seed=1)
    differ = sorted(k for k in first if not _same(first[k], second[k]))
    if differ:
        raise RandomInitError(
            "this checkpoint stores no initial model and rebuilding its backbone is not "
            f"deterministic ({len(differ)} tensors depend on the random seed, e.g. "
            f"{differ[:3]}), so theta_0 would be a random initialisation. " + fix
        )
    return first


def _same(a: Tensor, b: Tensor) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def _rebuild_student(hparams: dict[str, Any], seed: int) -> dict[str, Tensor]:
    """Build the checkpoint's backbone again from its hyper-parameters, seeded."""
    import torch
    from lightning.pytorch.cli import instantiate_module

    hparams = dict(hparams)
    hparams.pop("init_weights", None)
    instantiator = hparams.pop("_instantiator", "lightning.pytorch.cli.instantiate_module")
    if instantiator != "lightning.pytorch.cli.instantiate_module":
        raise ValueError(f"unsupported instantiator {instantiator!r} in checkpoint")
    hparams["distillation"] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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

    Every ``alpha`` is checked, ``theta_0`` found and every mixture computed before
    the first file is written, so a bad argument leaves no partial output.

    Args:
        finetuned: The fine-tuned cfmask checkpoint (``theta_1``).
        alphas: Distinct mixing coefficients in ``[0, 1]``.
        output_dir: Folder for the ``wise_alpha<label>.ckpt`` files (see :func:`wise_path`).
        zeroshot: Optional zero-shot weights; see :func:`initial_weights`.

    Returns:
        The written paths, in the order of ``alphas``.

    Raises:
        ValueError: On a bad ``alpha`` or an output that would overwrite an input.
        RandomInitError: If ``theta_0`` could only be a random initialisation.
    """
    import torch

    values = check_alphas(alphas)
    out_dir = Path(output_dir)
    paths = [wise_path(out_dir, a) for a in values]
    inputs = [finetuned] if zeroshot is None else [finetuned, zeroshot]
    for path in paths:
        _refuse_overwrite(path, inputs)
    ckpt = _lightning_checkpoint(finetuned)
    theta_1 = extract_prefixed(ckpt["state_dict"], STUDENT_PREFIX)
    theta_0 = initial_weights(ckpt, zeroshot)
    mixtures = [interpolate_state_dicts(theta_0, theta_1, a) for a in values]
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, mixed in zip(paths, mixtures, strict=True):
        torch.save(_with_student(ckpt, mixed), path)
    return paths


def _refuse_overwrite(output: Path, inputs: Sequence[str | Path]) -> None:
    for item in inputs:
        src = Path(item).expanduser()
        if output.expanduser().resolve() == src.resolve() or (
            output.exists() and src.exists() and output.samefile(src)
        ):
            raise ValueError(
                f"the output {output} is the input checkpoint {item}; writing it would "
                "destroy that input. Choose another output path."
            )


def soup_checkpoint(checkpoints: Sequence[str | Path], output: str | Path) -> Path:
    """Write the uniform soup of several fine-tuned checkpoints.

    Args:
        checkpoints: Two or more cfmask checkpoints of the same backbone.
        output: Path of the soup checkpoint (the first checkpoint's
            hyper-parameters and teachers are kept); must not be one of the inputs.

    Returns:
        ``output`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``output`` is one of ``checkpoints``.
    """
    import torch

    out = Path(output)
    _refuse_overwrite(out, checkpoints)
    loaded = [_lightning_checkpoint(p) for p in checkpoints]
    students = [extract_prefixed(c["state_dict"], STUDENT_PREFIX) for c in loaded]
    soup = average_state_dicts(students)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_with_student(loaded[0], soup), out)
    return out

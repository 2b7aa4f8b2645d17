"""Reading, checking and combining model weights.

Weight-space ensembling (WiSE-FT, Wortsman et al., CVPR 2022) interpolates every
weight, the classification head included, between the zero-shot model
``theta_0`` and a fine-tuned model ``theta_1``:
``theta = (1 - alpha) * theta_0 + alpha * theta_1``. A uniform model soup
(Wortsman et al., ICML 2022) averages several fine-tuned models. The functions
here work on plain state dicts; :mod:`cfmask.cli` wraps them as ``cfmask wise``
and ``cfmask soup``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cfmask.backbones._weights import load_state_dict_file

__all__ = (
    "STUDENT_PREFIX",
    "average_state_dicts",
    "check_compatible",
    "extract_prefixed",
    "interpolate_state_dicts",
    "read_checkpoint",
    "read_model_weights",
)

STUDENT_PREFIX = "student."
"""Prefix of the fine-tuned model's keys in a fine-tuner's state dict."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``) on the CPU.

    Args:
        path: A ``.ckpt``/``.pt``/``.pth`` file.

    Returns:
        The loaded mapping.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a mapping of plain data and tensors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors surface with many types
        raise ValueError(
            f"could not load {p} with weights_only=True ({err}); cfmask reads plain "
            "state dicts and Lightning checkpoints only, never pickled modules. "
            "Re-save the model with torch.save(model.state_dict(), path)."
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{p} holds a {type(obj).__name__}, expected a state dict")
    return obj


def extract_prefixed(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Return the entries under ``prefix`` with the prefix removed.

    Args:
        state_dict: Any state dict.
        prefix: Key prefix such as ``"student."``.

    Returns:
        The sub-dictionary (empty when no key has the prefix).

    Example:
        >>> import torch
        >>> extract_prefixed({"student.w": torch.zeros(1), "teachers.x": torch.ones(1)}, "student.")
        {'w': tensor([0.])}
    """
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def read_model_weights(path: str | Path) -> dict[str, Tensor]:
    """Read the fine-tuned model's weights from a cfmask checkpoint or a state dict.

    The file is read by :func:`~cfmask.backbones.load_state_dict_file` (plain or
    wrapped state dicts, safetensors, ``weights_only=True``). From a Lightning
    checkpoint of :class:`~cfmask.CounterfactualFineTuner` the ``student.*``
    entries are returned with the prefix removed; any other state dict is returned
    as it is.

    Args:
        path: Checkpoint or state-dict file.

    Returns:
        A backbone state dict.
    """
    state = load_state_dict_file(path)
    student = extract_prefixed(state, STUDENT_PREFIX)
    return student if student else state


def check_compatible(
    reference: Mapping[str, Tensor], other: Mapping[str, Tensor], what: str
) -> None:
    """Raise a clear error unless two state dicts have the same keys and shapes.

    Args:
        reference: The state dict of the model being built.
        other: The state dict read from ``what``.
        what: Description of where ``other`` came from (used in the message).

    Raises:
        ValueError: Listing missing/unexpected keys or mismatched shapes.
    """
    missing = sorted(set(reference) - set(other))
    unexpected = sorted(set(other) - set(reference))
    shapes = [
        f"{k}: {tuple(other[k].shape)} vs {tuple(reference[k].shape)}"
        for k in sorted(set(reference) & set(other))
        if tuple(other[k].shape) != tuple(reference[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise ValueError(
            f"{what} does not fit this backbone: {'; '.join(parts)}. It was probably "
            "saved from another architecture; build the model with the same backbone "
            "config (model name, patch size, image size, number of classes)."
        )


def interpolate_state_dicts(
    theta_0: Mapping[str, Tensor], theta_1: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """WiSE-FT: ``(1 - alpha) * theta_0 + alpha * theta_1`` for every floating entry.

    Non-floating entries (integer buffers) are taken from ``theta_1``.

    Args:
        theta_0: Zero-shot (pre-trained) weights.
        theta_1: Fine-tuned weights with the same keys and shapes.
        alpha: Mixing coefficient in ``[0, 1]``; 0 gives ``theta_0``, 1 gives ``theta_1``.

    Returns:
        The interpolated state dict.

    Example:
        >>> import torch
        >>> interpolate_state_dicts({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.25)
        {'w': tensor([0.2500, 0.2500])}
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    check_compatible(theta_1, theta_0, "the zero-shot weights")
    out: dict[str, Tensor] = {}
    for key, w1 in theta_1.items():
        w0 = theta_0[key]
        if torch.is_floating_point(w1):
            out[key] = torch.lerp(w0.to(w1.dtype), w1, alpha)
        else:
            out[key] = w1.clone()
    return out


def average_state_dicts(state_dicts: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Uniform model soup: the element-wise mean of several fine-tuned models.

    Args:
        state_dicts: Two or more state dicts with identical keys and shapes.

    Returns:
        The averaged state dict (non-floating entries from the first model).

    Example:
        >>> import torch
        >>> average_state_dicts([{"w": torch.zeros(1)}, {"w": torch.full((1,), 3.0)}])
        {'w': tensor([1.5000])}
    """
    if len(state_dicts) < 2:
        raise ValueError(f"a soup needs at least 2 models, got {len(state_dicts)}")
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        check_compatible(first, sd, f"model {i} of the soup")
    out: dict[str, Tensor] = {}
    for key, w in first.items():
        if torch.is_floating_point(w):
            acc = torch.zeros_like(w, dtype=torch.float64)
            for sd in state_dicts:
                acc += sd[key].to(torch.float64)
            out[key] = (acc / len(state_dicts)).to(w.dtype)
        else:
            out[key] = w.clone()
    return out

"""Read model weights from a local file, whatever common wrapper they come in."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ("load_state_dict_file",)

# Keys under which training scripts commonly nest the actual state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a plain ``{name: tensor}`` state dict from a local file, on the CPU.

    Accepted formats:

    * ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` files written by ``torch.save`` holding a
      state dict, or a dict wrapping one under ``"state_dict"``, ``"model_state_dict"``,
      ``"model"`` or ``"module"`` (as Lightning and many training scripts write);
    * ``.safetensors`` files (needs the ``safetensors`` package).

    Files are read with ``torch.load(weights_only=True)``, so no code in the file runs.
    A ``module.`` prefix left by ``DistributedDataParallel`` is stripped.

    Args:
        path: Local file path.

    Returns:
        The state dict, tensors on the CPU.

    Raises:
        FileNotFoundError: If ``path`` does not exist or is not a file.
        ValueError: If the file holds no mapping of names to tensors.
        ImportError: For a ``.safetensors`` file when ``safetensors`` is not installed.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     torch.save({"state_dict": {"w": torch.ones(2)}}, f"{d}/m.pt")
        ...     load_state_dict_file(f"{d}/m.pt")
        {'w': tensor([1., 1.])}
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"weights file {str(file)!r} does not exist; pass the path of a local state-dict "
            f"file (.pt/.pth/.bin/.safetensors), or pretrained=True/a hub tag to download."
        )
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - safetensors ships with timm
            raise ImportError(
                f"reading {str(file)!r} needs the 'safetensors' package: pip install safetensors"
            ) from err
        return dict(load_file(str(file), device="cpu"))
    try:
        obj: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read {str(file)!r} as a torch state dict with weights_only=True "
            f"({type(err).__name__}: {err}). Save the weights with "
            f"torch.save(model.state_dict(), path)."
        ) from err
    return _unwrap(obj, file)


def _unwrap(obj: Any, file: Path) -> dict[str, Tensor]:
    for _ in range(3):  # wrappers are rarely nested deeper than this
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{str(file)!r} does not contain a state dict (a mapping of parameter names to "
            f"tensors); got {type(obj).__name__}."
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(
            f"{str(file)!r} holds a mapping without tensors (keys: {list(obj)[:5]}); expected "
            f"a state dict, optionally wrapped under one of {list(_WRAPPER_KEYS)}."
        )
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors

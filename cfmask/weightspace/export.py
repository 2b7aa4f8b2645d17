"""Export a fine-tuned cfmask checkpoint as plain open_clip or timm weights.

``cfmask export CKPT --to timm`` writes the timm model's own state dict, which
``timm.create_model(name, pretrained=True, num_classes=K, ...,
pretrained_cfg_overlay=dict(file=FILE, num_classes=K))`` loads (the overlay's
``num_classes`` tells timm that the file's classifier fits the model; without it
timm drops the classifier and builds a new one).

``cfmask export CKPT --to open_clip`` writes a complete CLIP state dict, which
``open_clip.create_model(name, pretrained=FILE)`` loads: the fine-tuned image
tower, with the text tower and logit scale of the pre-trained model the run
started from. The fine-tuned classification head has no place in a CLIP model;
it goes to a second file, ``<name>.head.safetensors`` with ``weight`` ``(K, D)``
and ``bias`` ``(K,)``, and the logits are
``normalize(model.encode_image(x)) @ weight.T + bias``, with ``x`` normalised by
the model's own preprocessing, exactly as :class:`~cfmask.backbones.OpenCLIPViT`
computes them.

Files are written with safetensors by default (no pickle); ``fmt="pt"`` writes a
``torch.save`` file of plain tensors instead. Both record nothing but tensors
(and, for safetensors, string metadata naming the model).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from cfmask.backbones.openclip_vit import build_open_clip_model
from cfmask.backbones.state_dicts import STUDENT_PREFIX, extract_prefixed, read_checkpoint

__all__ = (
    "ExportResult",
    "Format",
    "Target",
    "export_checkpoint",
    "open_clip_state_dict",
    "save_weights",
    "timm_state_dict",
)

log = logging.getLogger(__name__)

Target = Literal["open_clip", "timm"]
Format = Literal["safetensors", "pt"]

_BACKBONE_FOR: dict[str, str] = {
    "open_clip": "cfmask.backbones.OpenCLIPViT",
    "timm": "cfmask.backbones.TimmViT",
}


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote.

    Attributes:
        weights: The model weights file.
        head: The classification-head file (open_clip only), else ``None``.
        load_snippet: Python code that loads ``weights`` with the target library.
        metadata: The string metadata stored in the file(s).
        config: For a run with a custom open_clip ``model_cfg``: the model config
            written next to the weights (named like them, ``.json``), which
            ``open_clip.add_model_config`` registers under the weights' file stem.
    """

    weights: Path
    head: Path | None = None
    load_snippet: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    config: Path | None = None


def save_weights(
    state: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a state dict as ``.safetensors`` (by suffix) or as a ``torch.save`` file.

    Tensors are copied to contiguous CPU memory first, so tied or shared tensors
    are written as independent entries (safetensors refuses shared storage).

    Args:
        path: Output file; ``.safetensors`` selects safetensors, anything else torch.
        state: Name to tensor.
        metadata: String metadata (safetensors only).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(plain, str(out), metadata=dict(metadata or {}))
    else:
        torch.save(plain, out)
    return out


def _backbone_config(ckpt: Mapping[str, Any], path: str | Path) -> tuple[str, dict[str, Any]]:
    hparams = ckpt.get("hyper_parameters")
    backbone = hparams.get("backbone") if isinstance(hparams, Mapping) else None
    if not isinstance(backbone, Mapping) or "class_path" not in backbone:
        raise ValueError(
            f"{path} has no backbone config in its hyper-parameters; pass a .ckpt written "
            "by `cfmask fit` (or a wise/soup checkpoint)."
        )
    return str(backbone["class_path"]), dict(backbone.get("init_args") or {})


def timm_state_dict(student: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The timm model's state dict inside a :class:`~cfmask.backbones.TimmViT` state dict.

    Args:
        student: ``TimmViT.state_dict()`` (keys ``model.*``).

    Returns:
        The entries under ``model.`` with the prefix removed.

    Example:
        >>> import torch
        >>> timm_state_dict({"model.head.weight": torch.zeros(2, 4)})["head.weight"].shape
        torch.Size([2, 4])
    """
    state = extract_prefixed(student, "model.")
    if not state:
        raise ValueError("the checkpoint's model has no 'model.*' weights; is it a TimmViT?")
    return state


def open_clip_state_dict(
    student: Mapping[str, Tensor], init_args: Mapping[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Tensor], bool]:
    """A full CLIP state dict with the fine-tuned image tower, and the head.

    The CLIP model is rebuilt from the run's backbone arguments (``model_name``,
    ``pretrained``, ``model_cfg``), which gives the pre-trained text tower and logit
    scale; its image tower is replaced by the fine-tuned one.

    Args:
        student: ``OpenCLIPViT.state_dict()`` (keys ``visual.*`` and ``head.*``).
        init_args: The backbone's constructor arguments from the checkpoint.

    Returns:
        ``(clip_state, head_state, quick_gelu_forced)``; ``head_state`` has ``weight``
        ``(K, D)`` and ``bias``; the flag says that the run forced QuickGELU on (OpenAI
        weights under a model name without ``-quickgelu``), so loading needs
        ``force_quick_gelu=True``.
    """
    model_name = str(init_args.get("model_name", "ViT-B-32"))
    pretrained = init_args.get("pretrained")
    model_cfg = init_args.get("model_cfg")
    if not pretrained:
        log.warning(
            "the run had no pre-trained weights (pretrained=%r): the exported text tower is "
            "a fresh random initialisation; only the image tower and head are trained",
            pretrained,
        )
    clip, quick_gelu = build_open_clip_model(model_name, pretrained, model_cfg)
    visual = extract_prefixed(student, "visual.")
    head = extract_prefixed(student, "head.")
    if not visual or "weight" not in head:
        raise ValueError(
            "the checkpoint's model has no 'visual.*'/'head.weight' weights; is it an OpenCLIPViT?"
        )
    clip.visual.load_state_dict(visual)
    return dict(clip.state_dict()), head, quick_gelu


def _default_output(checkpoint: Path, to: Target, fmt: Format) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}-{to}.{fmt}")


def export_checkpoint(
    checkpoint: str | Path,
    to: Target,
    output: str | Path | None = None,
    fmt: Format | None = None,
) -> ExportResult:
    """Write a fine-tuned cfmask checkpoint's model as open_clip or timm weights.

    Args:
        checkpoint: A cfmask Lightning checkpoint (``cfmask fit``, ``wise``, ``soup``).
        to: ``"open_clip"`` (the run's backbone must be ``OpenCLIPViT``) or
            ``"timm"`` (``TimmViT``).
        output: Weights file; default ``<checkpoint stem>-<to>.<fmt>`` next to it.
        fmt: ``"safetensors"`` (default) or ``"pt"``; by default taken from
            ``output``'s suffix when it is ``.pt``/``.pth``.

    Returns:
        The written files and a snippet that loads them.

    Raises:
        ValueError: On an unknown target or format, a checkpoint of another backbone,
            or an output that is the checkpoint itself.
    """
    if to not in _BACKBONE_FOR:
        raise ValueError(f"unknown export target {to!r}; choose 'open_clip' or 'timm'")
    src = Path(checkpoint).expanduser()
    if fmt is None:
        fmt = (
            "pt" if output is not None and Path(output).suffix in (".pt", ".pth") else "safetensors"
        )
    if fmt not in ("safetensors", "pt"):
        raise ValueError(f"unknown format {fmt!r}; choose 'safetensors' (default) or 'pt'")
    out = Path(output) if output is not None else _default_output(src, to, fmt)
    if fmt == "safetensors" and out.suffix != ".safetensors":
        raise ValueError(
            f"output {out} must end in .safetensors for the safetensors format "
            "(or pass --format pt for a torch file)"
        )
    if src.is_file() and out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"the output {out} is the input checkpoint; choose another path")
    ckpt = read_checkpoint(src)
    class_path, init_args = _backbone_config(ckpt, src)
    expected = _BACKBONE_FOR[to]
    if class_path.rsplit(".", 1)[-1] != expected.rsplit(".", 1)[-1]:
        other = next(
            (t for t, c in _BACKBONE_FOR.items() if c.endswith(class_path.split(".")[-1])), None
        )
        hint = f"; export it with --to {other}" if other else ""
        raise ValueError(f"{src} holds a {class_path} model; --to {to} needs a {expected}{hint}.")
    student = extract_prefixed(ckpt["state_dict"], STUDENT_PREFIX)
    model_name = str(init_args.get("model_name"))
    metadata = {"format": "pt", "source": "cfmask", "library": to, "model_name": model_name}
    if to == "timm":
        state = timm_state_dict(student)
        num_classes = int(state["head.weight"].shape[0]) if "head.weight" in state else None
        metadata["num_classes"] = str(num_classes)
        weights = save_weights(state, out, metadata)
        extra = {
            k: init_args[k] for k in ("img_size", "patch_size") if init_args.get(k) is not None
        }
        extra.update(init_args.get("model_kwargs") or {})
        kwargs = "".join(f", {k}={v!r}" for k, v in extra.items())
        snippet = (
            f"timm.create_model({model_name!r}, pretrained=True, num_classes={num_classes}"
            f"{kwargs}, pretrained_cfg_overlay=dict(file={str(weights)!r}, "
            f"num_classes={num_classes}))"
        )
        return ExportResult(weights, None, snippet, metadata)
    clip_state, head_state, quick_gelu = open_clip_state_dict(student, init_args)
    weights = save_weights(clip_state, out, metadata)
    head_path = out.with_name(f"{out.stem}.head{out.suffix}")
    head_meta = dict(metadata, logits="normalize(encode_image(x)) @ weight.T + bias")
    save_weights(head_state, head_path, head_meta)
    name, prefix, config = model_name, "", None
    model_cfg = init_args.get("model_cfg")
    if model_cfg:
        # a custom architecture: write its config so that open_clip can register it
        config = out.with_name(f"{out.stem}.json")
        config.write_text(json.dumps(model_cfg, indent=2) + "\n", encoding="utf-8")
        name = out.stem
        prefix = f"open_clip.add_model_config({str(config)!r}); "
    flag = ", force_quick_gelu=True" if quick_gelu else ""
    snippet = f"{prefix}open_clip.create_model({name!r}, pretrained={str(weights)!r}{flag})"
    return ExportResult(weights, head_path, snippet, metadata, config)

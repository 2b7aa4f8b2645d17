"""The CLIP text path that builds a zero-shot head: prompts, tokenizer, text encoder, cache.

:class:`~cfmask.backbones.OpenCLIPViT` fine-tunes only the image tower; its
:class:`~cfmask.backbones.heads.ZeroShotHead` is initialised once from the text tower, as in
WiSE-FT (Wortsman et al., CVPR 2022) and Xiao et al. (CVPR 2023, arXiv:2303.03052).
This module holds everything on that text side:

- :func:`default_templates`: the 80 OpenAI ImageNet prompt templates;
- :func:`clip_tokenizer`: the model's tokenizer (built-in name or custom config);
- :func:`truncating_text_encoder` and :func:`encode_text_truncated`: the text tower run
  on a context cut to the longest real prompt, exact for causal text towers;
- :func:`class_embeddings`: unit class embeddings through
  :func:`~cfmask.backbones.heads.build_zero_shot_weights`, read from and written to an on-disk
  cache keyed by :func:`text_cache_key` (under :func:`default_text_cache_dir` unless
  a directory is given).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import Tensor, nn

from cfmask.backbones.heads import build_zero_shot_weights

__all__ = (
    "class_embeddings",
    "clip_tokenizer",
    "default_templates",
    "default_text_cache_dir",
    "encode_text_truncated",
    "text_cache_key",
    "truncating_text_encoder",
)

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


def default_templates() -> list[str]:
    """The 80 OpenAI ImageNet prompt templates as ``"{}"`` strings."""
    return [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]


def class_embeddings(
    clip: Any,
    *,
    model_name: str,
    model_cfg: dict[str, Any] | None,
    pretrained: str | None,
    quick_gelu: bool,
    class_names: list[str],
    templates: list[str],
    cache_dir: str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Unit ``(K, D)`` class embeddings of a CLIP text tower, from the disk cache when possible.

    Row ``k`` is ``normalise(mean_t normalise(text(t(name_k))))`` over the templates
    (:func:`~cfmask.backbones.heads.build_zero_shot_weights` with ``logit_scale=1``). The result
    is stored in ``<cache_dir>/<key>.pt`` with the key of :func:`text_cache_key`; an
    entry that cannot be read is rebuilt, and a cache that cannot be written only logs
    a warning.

    Args:
        clip: An open_clip ``CLIP`` (its image tower may already be removed).
        model_name: open_clip model name (part of the cache key; picks the tokenizer
            when ``model_cfg`` is ``None``).
        model_cfg: The custom model config, if any (cache key and tokenizer).
        pretrained: The weights tag or path (cache key).
        quick_gelu: Whether the model runs QuickGELU (cache key).
        class_names: ``K`` class names.
        templates: Prompt templates, each with one ``"{}"`` placeholder.
        cache_dir: Cache directory; ``None`` = :func:`default_text_cache_dir`.
        device: Device the text tower runs on; moved back to the CPU afterwards.
        progress: Show a progress bar while encoding.

    Returns:
        ``(K, D)`` float embeddings of unit norm, on the CPU.
    """
    key = text_cache_key(
        clip=clip,
        model_name=model_name,
        model_cfg=model_cfg,
        pretrained=pretrained,
        quick_gelu=quick_gelu,
        class_names=class_names,
        templates=templates,
    )
    directory = Path(cache_dir).expanduser() if cache_dir else default_text_cache_dir()
    file = directory / f"{key}.pt"
    if file.is_file():
        try:
            cached = torch.load(file, map_location="cpu", weights_only=True)
            weight = cached["weight"]
            if isinstance(weight, Tensor) and weight.shape[0] == len(class_names):
                log.debug("text embeddings loaded from cache %s", file)
                return weight
        except Exception as err:  # corrupt cache entry: rebuild it
            log.warning("ignoring unreadable text-embedding cache %s (%s)", file, err)
    tokenizer = clip_tokenizer(model_name, model_cfg)
    encoder = truncating_text_encoder(clip)
    was_training = clip.training
    clip.eval()
    if device is not None:
        clip.to(device)
    try:
        weight = build_zero_shot_weights(
            encoder,
            tokenizer,
            class_names,
            templates,
            logit_scale=1.0,
            device=device,
            progress=progress,
        )
    finally:
        clip.train(was_training)
        if device is not None:
            clip.to("cpu")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp{os.getpid()}")
        torch.save({"weight": weight, "class_names": class_names, "templates": templates}, tmp)
        os.replace(tmp, file)
    except OSError as err:
        log.warning("could not write text-embedding cache %s (%s)", file, err)
    return weight


def clip_tokenizer(
    model_name: str, model_cfg: dict[str, Any] | None
) -> Callable[[list[str]], Tensor]:
    """The model's tokenizer (BPE vocabularies are loaded once per process).

    Args:
        model_name: open_clip model name; used when ``model_cfg`` is ``None``.
        model_cfg: A custom model config: its ``text_cfg`` gives the context length
            (77 by default) and, optionally, a Hugging Face ``hf_tokenizer_name``.

    Returns:
        A callable mapping ``P`` strings to ``(P, L)`` token ids.
    """
    if model_cfg is None:
        tok: Callable[[list[str]], Tensor] = open_clip.get_tokenizer(model_name)
        return tok
    text_cfg = model_cfg.get("text_cfg", {})
    context = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        hf: Callable[[list[str]], Tensor] = open_clip.HFTokenizer(
            text_cfg["hf_tokenizer_name"], context_length=context
        )
        return hf
    return _simple_tokenizer(context)


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int) -> Callable[[list[str]], Tensor]:
    simple: Callable[[list[str]], Tensor] = open_clip.SimpleTokenizer(context_length=context_length)
    return simple


def truncating_text_encoder(clip: Any) -> Callable[[Tensor], Tensor]:
    """Text encoder that truncates the context to the longest real prompt when exact.

    With a causal mask, a token never attends to later positions, so the padding after
    the last real token does not change any earlier output; pooling at the EOT/argmax or
    first position therefore gives the same embedding on the truncated sequence. Other
    text towers get their own ``encode_text``.

    Args:
        clip: An open_clip ``CLIP`` or ``CustomTextCLIP``.

    Returns:
        A callable mapping ``(P, L)`` token ids to ``(P, D)`` text embeddings.
    """
    pool = getattr(clip, "text_pool_type", None)
    causal = getattr(clip, "attn_mask", None)
    if not (
        isinstance(causal, Tensor)
        and pool in ("argmax", "eos", "first")
        and hasattr(clip, "token_embedding")
    ):
        encode_full: Callable[[Tensor], Tensor] = clip.encode_text
        return encode_full

    def encode(tokens: Tensor) -> Tensor:
        return encode_text_truncated(clip, tokens)

    return encode


def encode_text_truncated(clip: Any, tokens: Tensor) -> Tensor:
    """``clip.encode_text(tokens)`` computed on the shortest context holding every prompt.

    Args:
        clip: An open_clip ``CLIP`` with a causal text transformer.
        tokens: ``(P, L)`` token ids, zero-padded after each prompt.

    Returns:
        ``(P, D)`` un-normalised text embeddings.
    """
    nonpad = (tokens != 0).long()
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    length = int(((positions + 1) * nonpad).amax()) if tokens.numel() else 1
    length = max(length, 1)
    ids = tokens[:, :length]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(ids).to(cast) + clip.positional_embedding[:length].to(cast)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)
    x = open_clip.transformer.text_global_pool(
        x, ids, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None)
    )
    proj = clip.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    out: Tensor = x
    return out


def default_text_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cfmask/text``, or ``~/.cache/cfmask/text`` when it is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "cfmask" / "text"


def _text_digest(clip: nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=16)
    state = clip.state_dict()
    for name in sorted(state):
        if name.startswith("visual."):
            continue
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def text_cache_key(
    *,
    clip: nn.Module,
    model_name: str,
    model_cfg: dict[str, Any] | None,
    pretrained: str | None,
    quick_gelu: bool,
    class_names: Sequence[str],
    templates: Sequence[str],
) -> str:
    """The file name (without ``.pt``) of a text-embedding cache entry.

    A SHA-256 prefix over the cache format version, the model name and config, the
    ``pretrained`` value, a digest of every text-side weight (all but ``visual.*``),
    the activation, the class names and the templates: any change to one of them
    reads another entry.

    Args:
        clip: The CLIP model whose text weights are digested.
        model_name: open_clip model name.
        model_cfg: The custom model config, if any.
        pretrained: The weights tag or path.
        quick_gelu: Whether the model runs QuickGELU.
        class_names: The class names, in order.
        templates: The prompt templates, in order.

    Returns:
        32 hexadecimal characters.
    """
    payload = {
        "version": _CACHE_VERSION,
        "model_name": model_name,
        "model_cfg": model_cfg,
        "pretrained": pretrained,
        "quick_gelu": quick_gelu,
        "text_weights": _text_digest(clip),
        "class_names": list(class_names),
        "templates": list(templates),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]

"""Adapter for open_clip CLIP image towers with a zero-shot head."""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
from torch import Tensor, nn

from cfmask.backbones._openclip_attention import attention_patches
from cfmask.backbones._openclip_pooling import (
    explicit_pooler,
    native_pooled,
    native_pooling,
    pop_trunk_kwargs,
    rebuild_timm_trunk,
    without_patch_dropout,
)
from cfmask.backbones._pixels import register_normalisation, rgb_triple
from cfmask.backbones._timm_trunk import (
    TrunkSupport,
    inspect_trunk,
    trunk_attention_probes,
    trunk_pooled_features,
    trunk_set_fused_attention,
)
from cfmask.backbones._tokens import hide_patch_tokens
from cfmask.backbones.base import AttentionCaptureError, DataConfig, TokenPooling, VisionBackbone
from cfmask.backbones.clip_text import class_embeddings, default_templates
from cfmask.backbones.clip_text import (
    encode_text_truncated as encode_text_truncated,  # older import path
)
from cfmask.backbones.heads import ZeroShotHead

__all__ = (
    "CLASS_NAMES_FROM_DATAMODULE",
    "OpenCLIPViT",
    "build_open_clip_model",
    "default_templates",
)

log = logging.getLogger(__name__)

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: ``class_names`` value that defers the zero-shot head until the datamodule's
#: ``class_names`` are known (see :meth:`OpenCLIPViT.set_class_names`).
CLASS_NAMES_FROM_DATAMODULE = "datamodule"


@dataclass
class _TextTower:
    """The CLIP text tower kept (outside the module tree) until the head is built."""

    clip: Any
    quick_gelu: bool


class OpenCLIPViT(VisionBackbone):
    """An open_clip CLIP image tower plus a zero-shot head, as a :class:`VisionBackbone`.

    This is the model fine-tuned by Xiao et al. (CVPR 2023, arXiv:2303.03052) and by
    WiSE-FT: :meth:`forward_features` returns exactly what ``model.visual(x)`` returns,
    the un-normalised post-projection embedding ``ln_post(CLS) @ proj``; the head is a
    :class:`~cfmask.backbones.heads.ZeroShotHead` initialised from the text tower with
    ``class_names`` and ``templates`` and scaled by the model's ``logit_scale.exp()``
    (100 for OpenAI weights). The text tower is dropped after the head is built: only
    the image tower and the head are parameters. Inputs are ``[0, 1]`` pixels,
    normalised inside with the model's preprocessing mean/std (OpenAI CLIP's by default).

    The text side lives in :mod:`cfmask.backbones.clip_text`: text embeddings are cached on disk,
    keyed by a hash of the model name/config, the ``pretrained`` value, a digest of the
    text-tower weights, the activation, the class names and the templates, so the text
    tower runs once per setting. It runs on a context truncated to the longest real
    prompt, which is exact for causal text towers.

    **Image towers.** open_clip's own ``VisionTransformer`` (class-token, mean or CoCa
    attentional pooling) and timm trunks (``TimmModel``: the SigLIP/SigLIP2 and
    EVA-CLIP families, ``vit_medium_patch16_gap_256``, ...) are supported; a timm
    trunk goes through the same attention capture and patch hiding as
    :class:`~cfmask.backbones.TimmViT` (``cfmask.backbones._timm_trunk``), so BEiT-style
    relative-position trunks cannot hide patch tokens. A custom ``model_cfg`` may give
    ``vision_cfg["timm_model_kwargs"]`` (cfmask only, e.g. ``depth``/``embed_dim`` for a
    tiny trunk); the trunk is then built by cfmask at ``vision_cfg["image_size"]``.
    For a model with a logit bias (SigLIP, sigmoid-trained), the head starts with
    that bias on every class: ``logit_scale * cos + logit_bias``, exactly open_clip's
    image-to-text logits.

    **QuickGELU guard.** OpenAI's CLIP weights were trained with QuickGELU. When
    ``pretrained`` is ``"openai"``, or a file whose name contains ``openai`` or that is a
    TorchScript archive (the format OpenAI released), while the config does not enable
    QuickGELU (a ``-quickgelu`` model name or ``quick_gelu: true`` in ``model_cfg``),
    QuickGELU is **forced on** and a warning is logged. If ``model_cfg`` sets
    ``quick_gelu: false`` explicitly, a :class:`ValueError` is raised instead.

    Args:
        model_name: open_clip model name (``"ViT-B-32"``); with ``model_cfg`` only a label.
        pretrained: open_clip tag (``"openai"``; needs a reachable hub or its cache) or the
            path of a local full-CLIP checkpoint; ``None`` for random weights.
        model_cfg: A complete open_clip model config (``embed_dim``, ``vision_cfg``,
            ``text_cfg``, ...) for custom or tiny models; overrides the built-in config.
        class_names: Class names of the head; ``None`` = open_clip's ImageNet names
            (``open_clip.IMAGENET_CLASSNAMES``); ``"datamodule"`` = the training
            datamodule's ``class_names``: the head is then built once they are known
            (by :class:`~cfmask.CounterfactualFineTuner` at the start of ``fit``,
            ``validate`` or ``test``, or by :meth:`set_class_names`), never before.
        templates: Prompt templates with a ``"{}"`` placeholder; ``None`` = the 80
            OpenAI ImageNet templates.
        text_cache_dir: Directory of the text-embedding cache (one small ``.pt`` file
            per model, class list and template list); ``None`` =
            ``$XDG_CACHE_HOME/cfmask/text`` (``~/.cache/cfmask/text``).
        grad_checkpointing: Recompute each residual block's activations during the
            backward pass instead of storing them (open_clip's
            ``visual.set_grad_checkpointing``): less activation memory for about one
            extra forward pass per backward, same loss and gradients. Switched off
            inside :meth:`attention_probes`.

    Raises:
        FileNotFoundError: If ``pretrained`` names a file path that does not exist.
        ValueError: On a contradictory QuickGELU setting or a bad template.
        TypeError: If the image tower is neither open_clip's ``VisionTransformer`` nor a
            supported timm trunk (the message names the block class and the reason), or
            if its pooling has no relevance readout.

    Example:
        >>> import torch
        >>> cfg = {"embed_dim": 16,
        ...        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32,
        ...                       "layers": 1, "head_width": 16},
        ...        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16,
        ...                     "heads": 1, "layers": 1}}
        >>> vit = OpenCLIPViT("tiny", model_cfg=cfg, class_names=["cat", "dog"],
        ...                   templates=["a photo of a {}."])
        >>> vit(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 2])
    """

    mean_buffer: Tensor
    std_buffer: Tensor

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        model_cfg: dict[str, Any] | None = None,
        class_names: list[str] | Literal["datamodule"] | None = None,
        templates: list[str] | None = None,
        text_cache_dir: str | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.pretrained = pretrained
        self.model_cfg = model_cfg
        self.class_names = class_names
        self.templates = templates
        self.text_cache_dir = text_cache_dir
        self.grad_checkpointing = bool(grad_checkpointing)

        clip, quick_gelu = build_open_clip_model(model_name, pretrained, model_cfg)
        visual: Any = clip.visual
        self._trunk: Any = getattr(visual, "trunk", None)
        self._trunk_support: TrunkSupport | None = None
        if self._trunk is not None:  # open_clip's TimmModel (SigLIP, EVA-CLIP, ...)
            self._trunk_support = inspect_trunk(self._trunk, model_name)
            self._pooling: TokenPooling = self._trunk_support.pooling
        else:
            missing = [
                a
                for a in ("_embeds", "_pool", "transformer", "grid_size", "proj")
                if not hasattr(visual, a)
            ]
            if missing:
                raise TypeError(
                    f"OpenCLIPViT needs open_clip's VisionTransformer image tower "
                    f"(open_clip>=3.0) or a timm ViT trunk; {model_name!r} has a "
                    f"{type(visual).__name__} without {missing}."
                )
            self._pooling = native_pooling(visual, model_name)
            visual.output_tokens = False
        if self.grad_checkpointing:
            visual.set_grad_checkpointing(True)

        if isinstance(class_names, str) and class_names != CLASS_NAMES_FROM_DATAMODULE:
            raise ValueError(
                f"class_names must be a list of names, None (ImageNet) or "
                f"{CLASS_NAMES_FROM_DATAMODULE!r}, got the string {class_names!r}"
            )
        cfg_quick = quick_gelu or _config_quick_gelu(model_name, model_cfg)
        self._logit_scale = float(clip.logit_scale.detach().exp().flatten()[0])
        bias = getattr(clip, "logit_bias", None)  # SigLIP's sigmoid-loss bias
        self._logit_bias = None if bias is None else float(bias.detach().flatten()[0])
        self.visual: Any = visual
        self._text: _TextTower | None = None
        if class_names == CLASS_NAMES_FROM_DATAMODULE:
            clip.visual = nn.Identity()  # the image tower lives in self.visual
            self._text = _TextTower(clip, cfg_quick)
            self.head = ZeroShotHead(torch.zeros(0, _image_embed_dim(visual)))
        else:
            names = list(open_clip.IMAGENET_CLASSNAMES if class_names is None else class_names)
            unit = self._class_embeddings(clip, names, self._templates(), cfg_quick, progress=True)
            self.head = ZeroShotHead(unit * self._logit_scale, self._head_bias(len(names)))
        del clip  # the text tower and logit scale are not part of this module

        pp = getattr(visual, "preprocess_cfg", None) or {}
        size = visual.image_size
        self._data_config = DataConfig(
            image_size=int(size[0] if isinstance(size, tuple | list) else size),
            interpolation=str(pp.get("interpolation", "bicubic")),
            mean=rgb_triple(pp.get("mean", _OPENAI_MEAN)),
            std=rgb_triple(pp.get("std", _OPENAI_STD)),
        )
        register_normalisation(self, self._data_config)
        self._probing = False

    # ------------------------------------------------------------------ config
    def init_args(self) -> dict[str, Any]:
        """Return the constructor arguments (see :meth:`Component.init_args`).

        ``grad_checkpointing`` is a memory option; it appears only when it is on, so
        configs written before it existed stay unchanged.
        """
        args = super().init_args()
        if not args.get("grad_checkpointing"):
            args.pop("grad_checkpointing", None)
        return args

    # ------------------------------------------------------------- class names
    @property
    def needs_class_names(self) -> bool:
        """Whether the head waits for class names (``class_names="datamodule"``)."""
        return self._text is not None

    def zero_shot_weight(
        self,
        class_names: Sequence[str],
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Build the ``(K, D)`` zero-shot head weight for ``class_names`` (text tower kept).

        Row ``k`` is ``logit_scale * normalise(mean_t normalise(text(t(name_k))))`` over
        the templates (see :func:`~cfmask.backbones.heads.build_zero_shot_weights`); read from the
        text-embedding cache when present.

        Args:
            class_names: ``K`` class names.
            device: Device the text tower runs on (e.g. the accelerator); moved back
                to the CPU afterwards.
            progress: Show a progress bar while encoding.

        Returns:
            ``(K, D)`` float weight on the CPU.

        Raises:
            RuntimeError: If the head was already built (the text tower is gone).
        """
        if self._text is None:
            raise RuntimeError(
                "the text tower was dropped when the head was built; build the backbone "
                f'with class_names="{CLASS_NAMES_FROM_DATAMODULE}" to set class names later.'
            )
        names = list(class_names)
        unit = self._class_embeddings(
            self._text.clip, names, self._templates(), self._text.quick_gelu, device, progress
        )
        return unit * self._logit_scale

    def set_class_names(self, class_names: Sequence[str], weight: Tensor | None = None) -> None:
        """Build the zero-shot head for ``class_names`` and drop the text tower.

        Args:
            class_names: ``K`` class names, in class-index order.
            weight: The ``(K, D)`` head weight if already computed (e.g. on another
                process, see :meth:`zero_shot_weight`); built here when ``None``.

        Raises:
            RuntimeError: If the head was already built.
            ValueError: If ``weight`` does not have shape ``(K, D)``.
        """
        names = list(class_names)
        if weight is None:
            weight = self.zero_shot_weight(names)
        if self._text is None:
            raise RuntimeError("the zero-shot head of this backbone is already built")
        expected = (len(names), self.head.in_features)
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"head weight must have shape {expected} for {len(names)} class names, "
                f"got {tuple(weight.shape)}"
            )
        bias = self._head_bias(len(names))
        self.head = ZeroShotHead(
            weight.to(self.mean_buffer.device),
            None if bias is None else bias.to(self.mean_buffer.device),
        )
        self.class_names = names
        self._text = None

    def _head_bias(self, num_classes: int) -> Tensor | None:
        """``(K,)`` initial head bias: the model's logit bias (SigLIP), else ``None``."""
        if self._logit_bias is None:
            return None
        return torch.full((num_classes,), self._logit_bias)

    def _templates(self) -> list[str]:
        return list(self.templates) if self.templates is not None else default_templates()

    # -------------------------------------------------------------- properties
    @property
    def patch_size(self) -> int:
        """Side of one square patch, in pixels."""
        owner = self._trunk.patch_embed if self._trunk is not None else self.visual
        size = owner.patch_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Number of patches along height and width."""
        owner = self._trunk.patch_embed if self._trunk is not None else self.visual
        gh, gw = owner.grid_size
        return int(gh), int(gw)

    @property
    def num_prefix_tokens(self) -> int:
        """One CLS token (open_clip's towers), or the timm trunk's prefix tokens."""
        return int(self._trunk.num_prefix_tokens) if self._trunk is not None else 1

    @property
    def logit_scale(self) -> float:
        """The CLIP model's ``logit_scale.exp()``, which scales the head's unit rows."""
        return self._logit_scale

    @property
    def logit_bias(self) -> float | None:
        """The CLIP model's logit bias (SigLIP), the head's initial bias; else ``None``."""
        return self._logit_bias

    @property
    def token_pooling(self) -> TokenPooling:
        """``"cls"``, ``"mean"`` or ``"attention"`` (CoCa's pooler, SigLIP's MAP head)."""
        return self._pooling

    @property
    def supports_token_hiding(self) -> bool:
        """``False`` for timm trunks with a relative position bias."""
        support = self._trunk_support
        return support is None or support.token_hiding is None

    @property
    def feature_dim(self) -> int:
        """Dimension of the projected image embedding."""
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        """Number of classes of the zero-shot head."""
        return self.head.out_features

    @property
    def data_config(self) -> DataConfig:
        """Input size, interpolation and normalisation constants."""
        return self._data_config

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the zero-shot head."""
        return list(self.head.parameters())

    # ----------------------------------------------------------------- forward
    def forward_features(
        self,
        images: Tensor,
        *,
        keep_index: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """Encode ``(B, C, H, W)`` images in ``[0, 1]`` into ``(B, D)`` CLIP embeddings.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            keep_index: Optional ``(B, K)`` patch indices to keep; the other patch tokens
                are dropped after the positional embedding and ``ln_pre``.
            key_mask: Optional ``(B, N)`` bool; ``True`` hides that patch as a key from
                every query in every block (additive ``-inf`` mask of shape
                ``(B * heads, T, T)``). Combined with ``keep_index`` it is indexed by the
                original patch positions.

        Returns:
            ``(B, D)`` un-normalised projected embeddings.
        """
        x = (images - self.mean_buffer) / self.std_buffer
        visual = self.visual
        if keep_index is None and key_mask is None:
            return visual(x)  # type: ignore[no-any-return]
        if self._trunk is not None and self._trunk_support is not None:
            pooled = trunk_pooled_features(
                self._trunk,
                self._trunk_support,
                x,
                keep_index,
                key_mask,
                self.num_patches,
                self.model_name,
            )
            return visual.head(self._trunk.head(pooled))  # type: ignore[no-any-return]
        with without_patch_dropout(visual, "patch_dropout"):  # hidden patches leave anyway
            embedded = visual._embeds(x)
        tokens, bias = hide_patch_tokens(embedded, keep_index, key_mask, self.num_patches, 1)
        mask: Tensor | None = None
        if bias is not None:  # open_clip takes a (B * heads, T, T) mask
            b, t = tokens.shape[:2]
            heads = visual.transformer.resblocks[0].attn.num_heads
            mask = bias.expand(b, heads, t, t).reshape(b * heads, t, t)
        tokens = visual.transformer(tokens, attn_mask=mask)
        pooled = native_pooled(visual, self._pooling, tokens, bias)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled

    def forward_head(self, features: Tensor) -> Tensor:
        """Map ``(B, D)`` embeddings to ``(B, K)`` zero-shot logits."""
        if self._text is not None:
            raise RuntimeError(
                f'the zero-shot head waits for class names (class_names="'
                f'{CLASS_NAMES_FROM_DATAMODULE}"): CounterfactualFineTuner builds it from '
                "the datamodule's class_names when fit/validate/test starts; outside a "
                "Trainer call set_class_names(names) first."
            )
        return self.head(features)  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- probing
    @contextmanager
    def attention_probes(self) -> Iterator[list[Tensor]]:
        """Record each block's ``(B, heads, T, T)`` post-softmax attention, in the graph.

        Replaces, per instance, each block's attention by an explicit softmax attention
        with the block's own weights, which appends the probabilities (before dropout).
        Two kinds of block are supported: open_clip's ``ResidualAttentionBlock`` with an
        ``nn.MultiheadAttention`` (its ``attention`` method is replaced; open_clip 3.x),
        and blocks whose ``attn`` is open_clip's own ``Attention`` module (its
        ``forward`` is replaced): the custom blocks of open_clip 3.x and every block of
        open_clip's main branch, which no longer uses ``nn.MultiheadAttention``. The
        latter's options (QK norm, scaled-cosine attention, head scaling, inner norm)
        are computed as open_clip does. Gradient checkpointing is switched off
        meanwhile (a recomputed block would record again during the backward pass).
        The original methods and flags are restored on exit, also on exceptions. Both
        kinds share one explicit computation (``cfmask.backbones._openclip_attention``).

        Yields:
            The list receiving one tensor per block and forward pass, in forward order.

        Raises:
            AttentionCaptureError: If a block has neither kind of attention, or if probes
                are already active.
        """
        if self._probing:
            raise AttentionCaptureError(
                "attention probes are already active on this backbone; nested probing "
                "is not supported."
            )
        if self._trunk is not None:
            self._probing = True
            try:
                with trunk_attention_probes(self._trunk, self.model_name) as trunk_probes:
                    yield trunk_probes
            finally:
                self._probing = False
            return
        probes: list[Tensor] = []
        patches = attention_patches(self.visual, self.model_name, probes)
        pooler = getattr(self.visual, "attn_pool", None)
        if pooler is not None:  # CoCa: record the pool's attention after the blocks'

            def pool_forward(x: Tensor) -> Tensor:
                return explicit_pooler(pooler, x, None, probes)

            patches.append((pooler, "forward", pool_forward))
        saved = [owner.__dict__.get(name) for owner, name, _ in patches]
        transformer = self.visual.transformer
        checkpointing = bool(getattr(transformer, "grad_checkpointing", False))
        self._probing = True
        try:
            transformer.grad_checkpointing = False
            for owner, name, method in patches:
                setattr(owner, name, method)
            yield probes
        finally:
            for (owner, name, _), original in zip(patches, saved, strict=True):
                if original is None:
                    owner.__dict__.pop(name, None)
                else:
                    setattr(owner, name, original)
            transformer.grad_checkpointing = checkpointing
            self._probing = False

    def set_fused_attention(self, enabled: bool) -> None:
        """Use open_clip's own (fused) attention (``True``, the default) or explicit softmax.

        ``False`` replaces every block's attention by the same explicit computation as
        :meth:`attention_probes` without recording anything: the reference
        implementation's own attention, for benchmarks and numerical comparisons.
        Outputs agree up to floating-point rounding.

        Args:
            enabled: ``True`` restores open_clip's attention path.

        Raises:
            AttentionCaptureError: If probes are active, or a block's attention is of
                neither supported kind (see :meth:`attention_probes`).
        """
        if self._probing:
            raise AttentionCaptureError("cannot switch attention while probes are active")
        if self._trunk is not None:
            trunk_set_fused_attention(self._trunk, self.model_name, enabled)
            return
        for owner, name, method in attention_patches(self.visual, self.model_name, None):
            if enabled:
                owner.__dict__.pop(name, None)
            else:
                setattr(owner, name, method)

    # -------------------------------------------------------------- text head
    def _class_embeddings(
        self,
        clip: Any,
        names: list[str],
        templates: list[str],
        quick_gelu: bool,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Unit ``(K, D)`` class embeddings.

        See :func:`cfmask.backbones.clip_text.class_embeddings`.
        """
        return class_embeddings(
            clip,
            model_name=self.model_name,
            model_cfg=self.model_cfg,
            pretrained=self.pretrained,
            quick_gelu=quick_gelu,
            class_names=names,
            templates=templates,
            cache_dir=self.text_cache_dir,
            device=device,
            progress=progress,
        )


# ---------------------------------------------------------------------- helpers
def _image_embed_dim(visual: Any) -> int:
    """Width of the image tower's output (open_clip's tower or a timm-trunk ``TimmModel``)."""
    if hasattr(visual, "output_dim"):
        return int(visual.output_dim)
    linears = [m for m in visual.head.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].out_features)
    trunk = visual.trunk
    if int(getattr(trunk, "num_classes", 0)) > 0:
        return int(trunk.num_classes)
    return int(getattr(trunk, "head_hidden_size", None) or trunk.num_features)


def _config_quick_gelu(model_name: str, model_cfg: dict[str, Any] | None) -> bool:
    if model_cfg is not None:
        return bool(model_cfg.get("quick_gelu", False))
    if model_name.lower().endswith("-quickgelu"):
        return True
    cfg = open_clip.get_model_config(model_name)
    return bool(cfg and cfg.get("quick_gelu", False))


def _looks_like_openai_weights(pretrained: str | None) -> bool:
    if not pretrained:
        return False
    if pretrained.lower() == "openai":
        return True
    path = Path(pretrained).expanduser()
    if not path.is_file():
        return False
    if "openai" in path.name.lower():
        return True
    if zipfile.is_zipfile(path):  # OpenAI released TorchScript archives
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())
    return False


def _force_quick_gelu(
    model_name: str, pretrained: str | None, model_cfg: dict[str, Any] | None
) -> bool:
    """Decide whether QuickGELU must be forced on (see the class docstring)."""
    if not _looks_like_openai_weights(pretrained):
        return False
    if model_cfg is not None and "quick_gelu" in model_cfg and not model_cfg["quick_gelu"]:
        raise ValueError(
            f"pretrained={pretrained!r} looks like OpenAI CLIP weights, which need QuickGELU, "
            f"but model_cfg sets quick_gelu=False. Set quick_gelu=True (or drop the key and "
            f"cfmask will enable it)."
        )
    if _config_quick_gelu(model_name, model_cfg):
        return False
    log.warning(
        "pretrained=%r looks like OpenAI CLIP weights, which were trained with QuickGELU; "
        "forcing quick_gelu=True for %r (use a '-quickgelu' model or set quick_gelu to "
        "silence this).",
        pretrained,
        model_name,
    )
    return True


def build_open_clip_model(
    model_name: str, pretrained: str | None, model_cfg: dict[str, Any] | None
) -> tuple[Any, bool]:
    """Build the full open_clip model the adapter wraps, exactly as :class:`OpenCLIPViT` does.

    Args:
        model_name: open_clip architecture name (e.g. ``"ViT-B-32"``).
        pretrained: open_clip tag, local checkpoint path, or ``None`` (random weights).
        model_cfg: Explicit model config instead of the named architecture.

    Returns:
        ``(clip, quick_gelu_forced)``: the CPU fp32 model and whether QuickGELU was
        forced on because the weights look like OpenAI's under a name without
        ``-quickgelu``.

    Raises:
        FileNotFoundError: For a weights path that does not exist.
        ValueError: For OpenAI weights with ``model_cfg`` setting ``quick_gelu=False``.
        RuntimeError: When open_clip cannot build the model (e.g. a hub tag offline).
    """
    quick_gelu = _force_quick_gelu(model_name, pretrained, model_cfg)
    return _build_clip(model_name, pretrained, model_cfg, quick_gelu), quick_gelu


def _build_clip(
    model_name: str, pretrained: str | None, model_cfg: dict[str, Any] | None, quick_gelu: bool
) -> Any:
    is_path = pretrained is not None and (
        os.sep in pretrained or Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}
    )
    if is_path and not Path(str(pretrained)).expanduser().is_file():
        raise FileNotFoundError(
            f"pretrained weights file {pretrained!r} does not exist; pass an existing "
            f"open_clip checkpoint path, an open_clip tag such as 'openai', or None."
        )
    if model_cfg is None:
        try:
            model: nn.Module = open_clip.create_model(
                model_name,
                pretrained=str(Path(str(pretrained)).expanduser()) if is_path else pretrained,
                force_quick_gelu=quick_gelu,
                precision="fp32",
                device="cpu",
            )
        except RuntimeError as err:
            raise RuntimeError(
                f"could not build open_clip model {model_name!r} with pretrained="
                f"{pretrained!r}: {err}. Without network access, pass the path of a local "
                f"checkpoint as pretrained (HF_HUB_OFFLINE=1 makes hub lookups fail fast)."
            ) from err
        return model
    cfg, trunk_cfg = pop_trunk_kwargs(model_cfg)
    if quick_gelu:
        cfg["quick_gelu"] = True
    custom_text = bool(cfg.pop("custom_text", False))
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(**cfg)
    if trunk_cfg is not None:
        rebuild_timm_trunk(model.visual, trunk_cfg, int(cfg["embed_dim"]))
    if pretrained is not None:
        if not is_path and not Path(pretrained).expanduser().is_file():
            raise FileNotFoundError(
                f"with model_cfg, pretrained must be a local checkpoint file; {pretrained!r} "
                f"is not one (hub tags need a built-in model_name and model_cfg=None)."
            )
        open_clip.load_checkpoint(model, str(Path(pretrained).expanduser()))
    return model

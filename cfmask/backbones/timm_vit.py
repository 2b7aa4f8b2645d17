"""Adapter for timm Vision Transformers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
from torch import Tensor, nn

from cfmask.backbones._pixels import register_normalisation, rgb_triple
from cfmask.backbones._timm_trunk import (
    TokenPooling,
    inspect_trunk,
    trunk_attention_probes,
    trunk_pooled_features,
    trunk_set_fused_attention,
)
from cfmask.backbones._weights import load_state_dict_file
from cfmask.backbones.base import AttentionCaptureError, DataConfig, VisionBackbone

__all__ = ("TimmViT",)

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmViT(VisionBackbone):
    """A timm ``VisionTransformer`` behind the :class:`VisionBackbone` interface.

    Works with any model built on ``timm.models.vision_transformer.VisionTransformer``,
    including ``vit_base_patch32_clip_224.openai`` (the CLIP image tower in timm form).
    The input is ``[0, 1]`` pixels; normalisation with :attr:`mean`/:attr:`std` happens
    inside. :meth:`forward_features` returns timm's pooled pre-logits feature
    (``forward_head(pre_logits=True)``: the CLS token after the final norm for CLS-pooled
    models) and :meth:`forward_head` applies timm's classifier.

    Attention runs fused (``scaled_dot_product_attention``) except inside
    :meth:`attention_probes`, which switches every block to the explicit path and records
    the post-softmax probabilities for relevance maps (Chefer et al., ICCV 2021;
    Xiao et al., CVPR 2023, arXiv:2303.03052). :meth:`set_fused_attention` turns the fused
    path off everywhere (the reference implementation's explicit attention, for
    benchmarks and numerical comparisons).

    Args:
        model_name: Any timm ViT name, e.g. ``"vit_base_patch32_clip_224.openai"``.
        pretrained: ``False`` for random weights; ``True`` for timm's hub weights of
            ``model_name``; or a local file path of a state dict (``.pt``/``.pth``/``.bin``/
            ``.safetensors``, see :func:`~cfmask.backbones._weights.load_state_dict_file`).
            A classifier whose shape differs from ``num_classes`` is left freshly
            initialised, as timm does.
        num_classes: Number of logits ``K``.
        img_size: Input side in pixels; ``None`` keeps the model default.
        patch_size: Patch side in pixels; ``None`` keeps the model default.
        model_kwargs: Extra ``timm.create_model`` keyword arguments (e.g. ``depth``,
            ``embed_dim``, ``num_heads`` for tiny test models).
        mean: Per-channel normalisation mean; ``None`` uses the model's pretrained config.
        std: Per-channel normalisation std; ``None`` uses the model's pretrained config.
        grad_checkpointing: Recompute each block's activations during the backward pass
            instead of storing them (timm's ``set_grad_checkpointing``): less activation
            memory for about one extra forward pass per backward. Same loss and gradients.
            It is switched off inside :meth:`attention_probes`, so a relevance pass (and
            a training forward shared with it) stores its activations as usual.

    Raises:
        FileNotFoundError: If ``pretrained`` is a path that does not exist.
        TypeError: If ``model_name`` is not a timm ViT whose attention cfmask can capture
            (``VisionTransformer``, ``Eva``, ``Beit``, ``VisionTransformerRelPos`` with
            timm's attention blocks), naming the block class and the reason; or if its
            pooling has no relevance readout (max pooling, no pooling).
        NotImplementedError: From :meth:`forward_features` with ``keep_index`` or
            ``key_mask`` on BEiT / ``vit_relpos`` models (relative position bias over
            the full grid), with the reason.

    Example:
        >>> import torch
        >>> vit = TimmViT("test_vit", num_classes=10, img_size=32, patch_size=8,
        ...               model_kwargs={"depth": 2})
        >>> vit(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> with vit.attention_probes() as probes:
        ...     _ = vit(torch.rand(2, 3, 32, 32))
        >>> [tuple(p.shape) for p in probes]
        [(2, 2, 17, 17), (2, 2, 17, 17)]
    """

    mean_buffer: Tensor
    std_buffer: Tensor

    def __init__(
        self,
        model_name: str,
        pretrained: bool | str = False,
        num_classes: int = 1000,
        img_size: int | None = None,
        patch_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.pretrained = pretrained
        self.model_kwargs = model_kwargs
        self.img_size = img_size
        # ``patch_size``/``num_classes`` are also interface properties; the init values
        # are kept in ``_init_*`` and exposed under their own name via ``init_args``.
        self._init_patch_size = patch_size
        self._init_num_classes = num_classes
        self.mean = mean
        self.std = std

        kwargs: dict[str, Any] = dict(model_kwargs or {})
        kwargs["num_classes"] = num_classes
        if img_size is not None:
            kwargs["img_size"] = img_size
        if patch_size is not None:
            kwargs["patch_size"] = patch_size
        file: Path | None = None
        if isinstance(pretrained, str):
            file = Path(pretrained).expanduser()
            if not file.is_file():
                raise FileNotFoundError(
                    f"pretrained weights file {pretrained!r} does not exist; pass an existing "
                    f"local state-dict path, pretrained=True for timm's hub weights, or False."
                )
        self.model: Any = timm.create_model(model_name, pretrained=pretrained is True, **kwargs)
        self._support = inspect_trunk(self.model, model_name)
        if file is not None:
            self._load_file(file)
        self.grad_checkpointing = bool(grad_checkpointing)
        if grad_checkpointing:
            timm_model: Any = self.model
            timm_model.set_grad_checkpointing(True)

        cfg: dict[str, Any] = dict(getattr(self.model, "pretrained_cfg", None) or {})
        self._data_config = DataConfig(
            image_size=self.grid_size[0] * self.patch_size,  # the pretrained cfg keeps 224
            interpolation=str(cfg.get("interpolation", "bicubic")),
            mean=rgb_triple(mean if mean is not None else cfg.get("mean", _IMAGENET_MEAN)),
            std=rgb_triple(std if std is not None else cfg.get("std", _IMAGENET_STD)),
        )
        register_normalisation(self, self._data_config)
        self._probing = False

    # ------------------------------------------------------------------ config
    def init_args(self) -> dict[str, Any]:
        """Return the constructor arguments (see :meth:`Component.init_args`)."""
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "num_classes": self._init_num_classes,
            "img_size": self.img_size,
            "patch_size": self._init_patch_size,
            "model_kwargs": self.model_kwargs,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "grad_checkpointing": self.grad_checkpointing,
        }

    # -------------------------------------------------------------- properties
    @property
    def patch_size(self) -> int:
        """Side of one square patch, in pixels."""
        size = self.model.patch_embed.patch_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Number of patches along height and width."""
        gh, gw = self.model.patch_embed.grid_size
        return int(gh), int(gw)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens."""
        return int(self.model.num_prefix_tokens)

    @property
    def token_pooling(self) -> TokenPooling:
        """``"cls"``, ``"mean"`` (``global_pool="avg"``) or ``"attention"`` (``"map"``)."""
        return self._support.pooling

    @property
    def supports_token_hiding(self) -> bool:
        """``False`` for relative-position-bias families (BEiT, ``vit_relpos``)."""
        return self._support.token_hiding is None

    @property
    def feature_dim(self) -> int:
        """Dimension of the pooled pre-logits feature."""
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    @property
    def num_classes(self) -> int:
        """Number of logits."""
        return int(self.model.num_classes)

    @property
    def data_config(self) -> DataConfig:
        """Input size, interpolation and normalisation constants."""
        return self._data_config

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classifier (and its pre-logits layers, if any)."""
        params: list[nn.Parameter] = []
        for name in ("fc_norm", "head_drop", "head"):
            module = getattr(self.model, name, None)
            if isinstance(module, nn.Module):
                params.extend(module.parameters())
        return params

    # ----------------------------------------------------------------- forward
    def forward_features(
        self,
        images: Tensor,
        *,
        keep_index: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """Encode ``(B, C, H, W)`` images in ``[0, 1]`` into ``(B, D)`` pre-logits features.

        Args:
            images: ``(B, C, H, W)`` pixels in ``[0, 1]``.
            keep_index: Optional ``(B, K)`` patch indices to keep; the other patch tokens
                are dropped after the positional embedding. Prefix tokens are kept.
            key_mask: Optional ``(B, N)`` bool; ``True`` hides that patch token as a key
                from every query in every block. Combined with ``keep_index``, the mask
                is indexed by the original patch positions.

        Returns:
            ``(B, D)`` features.
        """
        x = (images - self.mean_buffer) / self.std_buffer
        return trunk_pooled_features(
            self.model, self._support, x, keep_index, key_mask, self.num_patches, self.model_name
        )

    def forward_head(self, features: Tensor) -> Tensor:
        """Map ``(B, D)`` features to ``(B, K)`` logits with timm's classifier."""
        return self.model.head(features)  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- probing
    @contextmanager
    def attention_probes(self) -> Iterator[list[Tensor]]:
        """Record each block's ``(B, heads, T, T)`` post-softmax attention, in the graph.

        Sets ``fused_attn = False`` on every block's attention and hooks its
        ``attn_drop`` (always called, even with ``p = 0``) to capture the probabilities
        before dropout. Gradient checkpointing is switched off meanwhile: a recomputed
        block would call the hook again during the backward pass, and the probabilities
        must stay in the graph anyway. Flags and hooks are restored on exit, also on
        exceptions.

        Yields:
            The list receiving one tensor per block and forward pass, in forward order.

        Raises:
            AttentionCaptureError: If a block has no ``attn.fused_attn``/``attn.attn_drop``
                (not a timm ``Attention``), or if probes are already active.
        """
        if self._probing:
            raise AttentionCaptureError(
                "attention_probes() is already active on this backbone; nested probing "
                "is not supported."
            )
        self._probing = True
        try:
            with trunk_attention_probes(self.model, self.model_name) as probes:
                yield probes
        finally:
            self._probing = False

    def set_fused_attention(self, enabled: bool) -> None:
        """Use fused (``True``, the default) or explicit softmax attention in every block.

        The explicit path is what the reference implementation runs everywhere; it gives
        the same outputs up to floating-point rounding and is slower. Meant for
        benchmarks and numerical comparisons; :meth:`attention_probes` restores the
        setting it found.

        Args:
            enabled: ``True`` for ``scaled_dot_product_attention``.

        Raises:
            AttentionCaptureError: If a block has no timm ``fused_attn`` flag.
        """
        trunk_set_fused_attention(self.model, self.model_name, enabled)

    # ----------------------------------------------------------------- weights
    def _load_file(self, file: Path) -> None:
        state = load_state_dict_file(file)
        try:
            from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
        except ImportError:  # pragma: no cover - present in every supported timm
            pass
        else:
            if isinstance(self.model, VisionTransformer):
                # Converts OpenAI-CLIP / DINOv2 / ... layouts, resamples position embeddings.
                state = checkpoint_filter_fn(state, self.model)
        own = self.model.state_dict()
        dropped = [
            k
            for k, v in state.items()
            if k.startswith("head.") and k in own and own[k].shape != v.shape
        ]
        for k in dropped:
            del state[k]
        if dropped:
            log.warning(
                "%s: classifier in %s has another shape than num_classes=%d; keeping a fresh "
                "head (%s).",
                self.model_name,
                file,
                self._init_num_classes,
                ", ".join(dropped),
            )
        result = self.model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k not in dropped]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"weights in {str(file)!r} do not fit {self.model_name!r} with the given "
                f"arguments: missing {missing[:8]}, unexpected {result.unexpected_keys[:8]}. "
                f"Check model_name, img_size, patch_size and model_kwargs."
            )

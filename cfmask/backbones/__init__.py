"""Backbone adapters: timm and open_clip ViTs behind one :class:`VisionBackbone` interface.

The adapters themselves (:class:`TimmViT`, :class:`OpenCLIPViT`) are imported on
first use, so that code which only needs the interface (:class:`VisionBackbone`,
:class:`DataConfig`) — the data pipeline, for example — does not pay for loading
timm and open_clip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cfmask.backbones._weights import load_state_dict_file
from cfmask.backbones.base import AttentionCaptureError, DataConfig, VisionBackbone
from cfmask.core.lazy import lazy_attributes

if TYPE_CHECKING:
    from cfmask.backbones.openclip_vit import OpenCLIPViT
    from cfmask.backbones.timm_vit import TimmViT

__all__ = (
    "AttentionCaptureError",
    "DataConfig",
    "OpenCLIPViT",
    "TimmViT",
    "VisionBackbone",
    "load_state_dict_file",
)

#: Adapter class name → the module that defines it (imported on first access).
ADAPTER_MODULES = {
    "OpenCLIPViT": "cfmask.backbones.openclip_vit",
    "TimmViT": "cfmask.backbones.timm_vit",
}


__getattr__, __dir__ = lazy_attributes(__name__, ADAPTER_MODULES, lambda: globals())

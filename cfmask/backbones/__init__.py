"""Backbone adapters: timm and open_clip ViTs behind one :class:`VisionBackbone` interface."""

from cfmask.backbones._weights import load_state_dict_file
from cfmask.backbones.base import AttentionCaptureError, DataConfig, VisionBackbone
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

"""Backbone adapters: timm and open_clip ViTs behind one :class:`VisionBackbone` interface."""

from cfmask.backbones.base import AttentionCaptureError, DataConfig, VisionBackbone

__all__ = ("AttentionCaptureError", "DataConfig", "VisionBackbone")

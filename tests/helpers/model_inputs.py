"""Small inputs shared by the objective and fine-tuner tests."""

from __future__ import annotations

import torch
from torch import Tensor

from cfmask.backbones.timm_vit import TimmViT


def tiny_backbone(cfg: dict[str, object]) -> TimmViT:
    """A timm ViT from a tiny config (the ``tiny_timm_config`` fixture)."""
    return TimmViT(**cfg)  # type: ignore[arg-type]


def fixed_batch(n: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    """``n`` seeded 32-px images and cycling class targets."""
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.arange(n) % classes


def perturb(module: torch.nn.Module) -> None:
    """Move every parameter a little, so a student differs from its teacher."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))

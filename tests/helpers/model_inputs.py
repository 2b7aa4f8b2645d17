"""Small inputs and checks shared by the objective, fine-tuner and equivalence tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cfmask.backbones.openclip_vit import OpenCLIPViT
from cfmask.backbones.timm_vit import TimmViT
from cfmask.testing import tiny_clip_args
from cfmask.training.finetuner import CounterfactualFineTuner


def tiny_backbone(cfg: dict[str, Any], **overrides: Any) -> TimmViT:
    """A timm ViT from a tiny config (the ``tiny_timm_config`` fixture) and extra init args."""
    return TimmViT(**{**cfg, **overrides})


def tiny_clip(tmp_path: Path, **overrides: Any) -> OpenCLIPViT:
    """A 16-dim, 2-block CLIP with a 3-class, 1-template zero-shot head (cache in tmp_path)."""
    args = tiny_clip_args(
        tmp_path / "text",
        model_name="tiny",
        templates=["a photo of a {}."],
        embed_dim=16,
        vision={"width": 32, "head_width": 16},
        text={"context_length": 16, "width": 16, "heads": 1},
        init_logit_scale=None,
    )
    return OpenCLIPViT(**args, **overrides)


def fixed_batch(n: int = 4, classes: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    """``n`` seeded 32-px images and cycling class targets."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.arange(n) % classes


def perturb(module: torch.nn.Module, seed: int | None = None) -> None:
    """Move every parameter a little, so a student differs from its teacher.

    The noise comes from the global RNG, or from a generator seeded with ``seed``.
    """
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def loss_and_grads(
    model: CounterfactualFineTuner, x: Tensor, y: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """The objective's total loss on ``(x, y)`` and its gradients for the student.

    The global RNG is seeded first, so random masks and donors repeat across calls.
    """
    torch.manual_seed(11)
    loss = model.objective(x, y).loss
    grads = torch.autograd.grad(loss, list(model.student.parameters()))
    return loss.detach(), list(grads)


def assert_same_loss_and_grads(
    a: tuple[Tensor, list[Tensor]], b: tuple[Tensor, list[Tensor]]
) -> None:
    """Two ``(loss, gradients)`` results agree within fp32 rounding."""
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    for g0, g1 in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)

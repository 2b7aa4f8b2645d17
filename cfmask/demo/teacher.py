"""The demo's backbone recipe and the pre-training of its "pre-trained" teacher.

The teacher plays the part of CLIP in the paper: a model trained on broad data in
which the background carries no information about the class. It is trained once,
with a plain supervised loop on the pre-training pool, by ``cfmask demo pretrain``,
and shipped inside the package (see :mod:`cfmask.demo.pretrained`) as a timm state
dict that :class:`~cfmask.backbones.timm_vit.TimmViT` loads through its
``pretrained=<path>`` argument, exactly as a user would load real pre-trained weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cfmask.backbones.timm_vit import TimmViT
from cfmask.demo.data import ImageSet, PoolConfig

__all__ = (
    "ModelConfig",
    "PretrainConfig",
    "accuracy",
    "build_backbone",
    "pinned_torch",
    "pretrain_teacher",
)


@dataclass(frozen=True)
class ModelConfig:
    """The tiny timm ViT used throughout the demo.

    Attributes:
        model_name: timm architecture the sizes below override.
        img_size: Input side in pixels.
        patch_size: Patch side in pixels (an 8x8 grid at 32 px and patch 4).
        model_kwargs: Extra ``timm.create_model`` arguments (width, depth, heads).
        num_classes: Number of classes.
    """

    model_name: str = "vit_tiny_patch16_224"
    img_size: int = 32
    patch_size: int = 4
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"embed_dim": 64, "depth": 4, "num_heads": 4}
    )
    num_classes: int = 10


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised pre-training of the pre-trained model (the teacher).

    Attributes:
        pool: The pre-training pool.
        epochs: Passes over the pool.
        batch_size: Images per step.
        lr: Peak AdamW learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        warmup_fraction: Share of the steps spent warming up (one-cycle ``pct_start``).
        seed: Seed of the initialisation and the data order.
        threads: Torch CPU threads during pre-training. Float sums are reduced in a
            different order with a different thread count, so the weights (and every
            figure downstream) depend on it; it is part of the recipe.
    """

    pool: PoolConfig = field(default_factory=PoolConfig)
    epochs: int = 16
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    seed: int = 0
    threads: int = 1


def build_backbone(model: ModelConfig, pretrained: bool | str = False) -> TimmViT:
    """Build the demo's :class:`TimmViT`.

    Args:
        model: Architecture.
        pretrained: ``False`` for random weights or a local state-dict path.

    Returns:
        The backbone adapter.
    """
    return TimmViT(
        model.model_name,
        pretrained=pretrained,
        num_classes=model.num_classes,
        img_size=model.img_size,
        patch_size=model.patch_size,
        model_kwargs=dict(model.model_kwargs),
    )


@contextmanager
def pinned_torch(threads: int, *, deterministic: bool = True) -> Iterator[None]:
    """Pin what changes numbers: the torch thread count and deterministic algorithms.

    Restores the previous settings on exit.

    Args:
        threads: Torch intra-op threads to use.
        deterministic: Whether to call ``torch.use_deterministic_algorithms(True)``.

    Yields:
        Nothing; the body runs with the pinned settings.

    Raises:
        ValueError: If ``threads`` is below 1.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def pretrain_teacher(
    pool: ImageSet,
    model: ModelConfig,
    cfg: PretrainConfig,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[int, TimmViT], None] | None = None,
) -> dict[str, Tensor]:
    """Train the pre-trained model from scratch on the pool (cross-entropy, AdamW, one-cycle).

    Runs with :func:`pinned_torch` at ``cfg.threads`` threads, so the same recipe gives
    the same weights on the same CPU kind and torch version.

    Args:
        pool: Pre-training images (class-independent backgrounds).
        model: Architecture.
        cfg: Training recipe.
        on_step: Called as ``on_step(step, total)`` after every optimisation step.
        on_epoch: Called as ``on_epoch(epoch, backbone)`` after every epoch (1-based).

    Returns:
        The timm model's state dict (CPU tensors), loadable by
        :class:`~cfmask.backbones.timm_vit.TimmViT` through ``pretrained=<file>``.

    Raises:
        RuntimeError: If the loss becomes non-finite.
    """
    with pinned_torch(cfg.threads):
        torch.manual_seed(cfg.seed)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        backbone = build_backbone(model).to(device)
        y_all = pool.labels
        per_epoch = max(1, len(y_all) // cfg.batch_size)
        total = cfg.epochs * per_epoch
        opt = torch.optim.AdamW(backbone.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup_fraction
        )
        gen = torch.Generator().manual_seed(cfg.seed)
        step = 0
        for epoch in range(cfg.epochs):
            backbone.train()
            order = torch.randperm(len(y_all), generator=gen)
            for i in range(per_epoch):
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                x = pool.images[idx].to(device).float().div_(255.0)
                loss = F.cross_entropy(backbone(x), y_all[idx].to(device))
                if not math.isfinite(float(loss.detach())):
                    raise RuntimeError(
                        "pre-training diverged (non-finite loss); lower PretrainConfig.lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                step += 1
                if on_step is not None:
                    on_step(step, total)
            if on_epoch is not None:
                on_epoch(epoch + 1, backbone)
    return {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}


@torch.no_grad()
def accuracy(backbone: torch.nn.Module, images: ImageSet, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent of ``backbone`` on ``images``.

    Args:
        backbone: Any module mapping ``[0, 1]`` images to logits.
        images: Labelled images.
        batch_size: Evaluation batch size.

    Returns:
        Accuracy in ``[0, 100]``.
    """
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        x: Tensor = images.images[i : i + batch_size].to(device).float().div_(255.0)
        pred = backbone(x).argmax(dim=1).cpu()
        correct += int((pred == images.labels[i : i + batch_size]).sum())
    backbone.train(was_training)
    return 100.0 * correct / max(1, len(images))

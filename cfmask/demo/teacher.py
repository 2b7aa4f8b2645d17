"""The demo's backbone recipe and the pre-training of its "pre-trained" teacher.

The teacher plays the part of CLIP in the paper: a model trained on broad data in
which the background carries no information about the class. It is trained here,
once per benchmark, with a plain supervised loop on the pre-training pool, and
saved as a timm state dict that :class:`~cfmask.backbones.timm_vit.TimmViT`
loads through its ``pretrained=<path>`` argument, exactly as a user would load
real pre-trained weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cfmask.backbones.timm_vit import TimmViT
from cfmask.demo.data import ImageSet

__all__ = (
    "ModelConfig",
    "PretrainConfig",
    "accuracy",
    "build_backbone",
    "load_or_pretrain_teacher",
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
    """Supervised pre-training of the teacher.

    Attributes:
        epochs: Passes over the pre-training pool.
        batch_size: Images per step.
        lr: Peak AdamW learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        seed: Seed of the initialisation and the data order.
    """

    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0


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


def _fingerprint(model: ModelConfig, cfg: PretrainConfig, data_key: str) -> str:
    text = json.dumps(
        {"model": asdict(model), "pretrain": asdict(cfg), "data": data_key}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_or_pretrain_teacher(
    pool: ImageSet,
    model: ModelConfig,
    cfg: PretrainConfig,
    cache_dir: Path,
    data_key: str,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[Path, bool]:
    """Return the path of the teacher's weights, training it unless a cached copy exists.

    Args:
        pool: Pre-training images (class-independent backgrounds).
        model: Architecture.
        cfg: Training recipe.
        cache_dir: Folder of the weights file (named by a hash of all settings).
        data_key: A string that identifies the benchmark data (its configuration).
        on_step: Called as ``on_step(step, total)`` after every optimisation step.

    Returns:
        ``(path, trained)`` where ``trained`` is ``False`` when the cache was used.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"teacher-{_fingerprint(model, cfg, data_key)}.pt"
    if path.is_file():
        return path, False
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = build_backbone(model).to(device)
    x = pool.float_images().to(device)
    y = pool.labels.to(device)
    per_epoch = max(1, len(y) // cfg.batch_size)
    total = cfg.epochs * per_epoch
    opt = torch.optim.AdamW(backbone.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    backbone.train()
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen).to(device)
        for i in range(per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = F.cross_entropy(backbone(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            step += 1
            if on_step is not None:
                on_step(step, total)
    if not math.isfinite(float(loss.detach())):
        raise RuntimeError("teacher pre-training diverged (non-finite loss); lower the lr")
    torch.save({k: v.cpu() for k, v in backbone.model.state_dict().items()}, path)
    return path, True


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

"""Loader settings shared by the image datamodules, and the loaders built from them.

Every image datamodule takes the same ten loader settings as constructor
keywords (so YAML recipes and LightningCLI see them flat) and keeps them as one
frozen :class:`LoaderConfig`. :func:`build_loader` applies the one loader
policy: pinned memory and persistent workers when training on a GPU unless set,
``drop_last=True`` and an epoch-seeded shuffle for training (the counterfactual
refill pairs images inside equal-size batches, and a run resumed inside an
epoch continues with the next batch), a fixed order and a private generator for
evaluation.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from cfmask.data.folder import collate_skipping
from cfmask.data.resumable import ResumableDataLoader
from cfmask.data.transforms import INTERPOLATIONS

__all__ = ("LoaderConfig", "build_loader", "default_num_workers")


def default_num_workers() -> int:
    """Loader processes when none are asked for: ``min(8, CPUs this process may use)``.

    Returns:
        A worker count in ``[1, 8]``.
    """
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return min(8, cpus)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_positive(name: str, value: Any) -> None:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """How a datamodule turns its sets into loaders; validated when built.

    ``None`` in ``eval_batch_size``, ``num_workers``, ``pin_memory`` and
    ``persistent_workers`` means "choose for me"; :meth:`resolved` makes the
    first two choices once (a datamodule keeps the resolved copy), the last two
    are made per loader because they depend on where the trainer runs.

    Attributes:
        batch_size: Training batch size (the last incomplete batch is dropped).
        eval_batch_size: Validation/test batch size; ``None`` → ``batch_size``.
        num_workers: Loader processes; ``None`` → :func:`default_num_workers`.
        image_size: Side of the square crop, in pixels.
        interpolation: Resize interpolation, a key of
            :data:`~cfmask.data.transforms.INTERPOLATIONS`.
        augment: Light training augmentation (``RandomResizedCrop(0.9, 1)``).
        pin_memory: Pin host memory; ``None`` → on when training on a GPU.
        persistent_workers: Keep workers alive between epochs; ``None`` → on
            when training on a GPU (never without workers).
        skip_corrupt: Skip and report undecodable images instead of raising.
        cache_dir: Directory for the crop caches (:mod:`cfmask.data.cache`);
            ``None`` → no cache.

    Raises:
        ValueError: A batch size or ``image_size`` that is not a positive
            integer, a negative or non-integer ``num_workers``, or an unknown
            ``interpolation``.

    Example:
        >>> cfg = LoaderConfig(batch_size=32, num_workers=2)
        >>> cfg.resolved().eval_batch_size, cfg.pin_memory_for(on_gpu=True)
        (32, True)
    """

    batch_size: int = 128
    eval_batch_size: int | None = None
    num_workers: int | None = None
    image_size: int = 224
    interpolation: str = "bicubic"
    augment: bool = False
    pin_memory: bool | None = None
    persistent_workers: bool | None = None
    skip_corrupt: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        _check_positive("batch_size", self.batch_size)
        if self.eval_batch_size is not None:
            _check_positive("eval_batch_size", self.eval_batch_size)
        if self.num_workers is not None and (not _is_int(self.num_workers) or self.num_workers < 0):
            raise ValueError(
                f"num_workers must be a non-negative integer (0 loads in the main process) "
                f"or None for min(8, CPUs), got {self.num_workers!r}"
            )
        _check_positive("image_size", self.image_size)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; "
                f"choose one of {sorted(INTERPOLATIONS)}"
            )

    def resolved(self) -> LoaderConfig:
        """This config with ``eval_batch_size`` and ``num_workers`` chosen.

        Returns:
            A copy whose ``eval_batch_size`` and ``num_workers`` are integers.
        """
        eval_batch = self.batch_size if self.eval_batch_size is None else self.eval_batch_size
        workers = default_num_workers() if self.num_workers is None else self.num_workers
        return dataclasses.replace(self, eval_batch_size=eval_batch, num_workers=workers)

    def pin_memory_for(self, on_gpu: bool) -> bool:
        """Whether loaders pin host memory when the trainer runs on a GPU or not."""
        return on_gpu if self.pin_memory is None else self.pin_memory

    def persistent_workers_for(self, on_gpu: bool) -> bool:
        """Whether loader workers persist between epochs (never without workers)."""
        persist = on_gpu if self.persistent_workers is None else self.persistent_workers
        workers = self.resolved().num_workers
        return persist and workers is not None and workers > 0


def _eval_generator() -> torch.Generator:
    """A private generator for an evaluation loader.

    A ``DataLoader`` draws a seed for its workers each time it is iterated; from
    this generator rather than torch's global one, so evaluating never shifts the
    random numbers training draws (and a resumed run matches an uninterrupted one).
    """
    return torch.Generator().manual_seed(0)


def build_loader(
    dataset: Dataset[Any], config: LoaderConfig, *, train: bool, on_gpu: bool
) -> DataLoader[Any]:
    """A loader over ``dataset`` under ``config``'s policy.

    Args:
        dataset: Map-style set whose items are ``(image, target)`` or ``None``
            (a skipped image, dropped by
            :func:`~cfmask.data.folder.collate_skipping`).
        config: Loader settings.
        train: Training loader (shuffled, last incomplete batch dropped,
            :class:`~cfmask.data.resumable.ResumableDataLoader`) or evaluation
            loader (fixed order, every sample, ``eval_batch_size``).
        on_gpu: Whether the trainer runs on a GPU (decides ``pin_memory`` and
            ``persistent_workers`` left as ``None``).

    Returns:
        The loader.
    """
    cfg = config.resolved()
    shared: dict[str, Any] = {
        "num_workers": cfg.num_workers,
        "pin_memory": cfg.pin_memory_for(on_gpu),
        "persistent_workers": cfg.persistent_workers_for(on_gpu),
        "collate_fn": collate_skipping,
    }
    if train:  # resumable in the middle of an epoch (cfmask.data.resumable)
        return ResumableDataLoader(
            dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, **shared
        )
    return DataLoader(
        dataset,
        batch_size=cfg.eval_batch_size,
        shuffle=False,
        drop_last=False,
        generator=_eval_generator(),
        **shared,
    )

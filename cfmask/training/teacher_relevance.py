"""The cached frozen-teacher relevance: the teacher's map computed once per training set.

With ``relevance_source="cached_teacher"``, :class:`~cfmask.CounterfactualFineTuner`
masks with the relevance map of the *frozen pre-trained model* (the objective's initial
teacher), computed over the whole training set once before the first step, stored as
fp16 next to the crop caches (:mod:`cfmask.data.relevance_cache`) and looked up by
sample index in every step. The step then runs no relevance forward and backward: the
student on ``[x; x_cf]`` (2F forward, 4F backward) and the teacher on ``x_cf`` (1F) make
7F, against 8F for the paper's step with a shared student relevance pass.

This is *not* the reference semantics: the reference recomputes the map on the current
student every step (Xiao et al., CVPR 2023, arXiv:2303.03052; see
``docs/concepts.md``). The teacher's map is a fixed function of the image only when the
training images are not augmented, which the paper's recipe satisfies and which the
fine-tuner checks where the datamodule says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cfmask.data.relevance_cache import (
    IndexedDataset,
    RelevanceCacheKey,
    dataset_fingerprint,
    read_relevance_cache,
    relevance_cache_path,
    state_dict_digest,
    write_relevance_cache,
)
from cfmask.training.objective import INITIAL_TEACHER, CounterfactualObjective

__all__ = (
    "cached_relevance_for_fit",
    "compute_teacher_relevance",
    "open_or_build_teacher_relevance",
    "request_indexed_batches",
    "teacher_relevance_key",
    "training_set_of",
)

_log = logging.getLogger(__name__)


def _teacher(objective: CounterfactualObjective) -> Any:
    if INITIAL_TEACHER not in objective.teachers or objective.relevance is None:
        raise ValueError(
            "a cached teacher relevance needs the objective's frozen initial teacher and a "
            "relevance map; build it with relevance_source='teacher' and a masker that "
            "uses relevance (e.g. ObjectMasker)."
        )
    return objective.teachers[INITIAL_TEACHER]


def _first_image(dataset: Dataset[Any]) -> Tensor:
    item = dataset[0]
    image = item[0] if isinstance(item, tuple | list) else item
    if not isinstance(image, Tensor) or image.ndim != 3:
        raise ValueError(
            "the training set's items must start with a (C, H, W) image tensor to cache "
            f"relevance over them; item 0 starts with {type(image).__name__}"
        )
    return image


def teacher_relevance_key(
    objective: CounterfactualObjective, dataset: Dataset[Any]
) -> RelevanceCacheKey:
    """The cache key of the teacher's map over ``dataset``.

    Args:
        objective: An objective with a frozen initial teacher and a relevance map.
        dataset: The training set, as the loader serves it (without index wrapper).

    Returns:
        The key: the teacher's and the relevance map's configuration (model), the
        teacher's weights, the served image shape and the set's fingerprint.
    """
    teacher = _teacher(objective)
    assert objective.relevance is not None
    model = {
        "backbone": teacher.config(),
        "relevance": objective.relevance.config(),
        "grid": list(teacher.grid_size),
    }
    model_digest = hashlib.sha256(json.dumps(model, sort_keys=True, default=str).encode())
    c, h, w = (int(s) for s in _first_image(dataset).shape)
    return RelevanceCacheKey(
        model=model_digest.hexdigest(),
        weights=state_dict_digest(teacher.state_dict()),
        image_shape=(c, h, w),
        data=dataset_fingerprint(dataset),
        num_samples=len(dataset),  # type: ignore[arg-type]
        num_patches=int(teacher.num_patches),
    )


def compute_teacher_relevance(
    objective: CounterfactualObjective,
    dataset: Dataset[Any],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> Tensor:
    """The frozen teacher's relevance map of every image of ``dataset``, in set order.

    Runs ``objective.relevance`` on the initial teacher in batches, exactly as the step
    does with ``relevance_source="teacher"`` (ground-truth targets, teacher in eval
    mode), at full precision. Draws nothing from torch's global generator.

    Args:
        objective: Objective with a frozen initial teacher and a relevance map.
        dataset: Items ``(image (C, H, W), target, ...)``; no skipped (``None``) items.
        device: Where the teacher runs (the run's accelerator).
        batch_size: Images per relevance pass.
        num_workers: Loader processes.
        progress: Show a progress bar.

    Returns:
        ``(len(dataset), N)`` float32 relevance on the CPU.

    Raises:
        ValueError: When an item could not be read (skipped images are not supported).
    """
    teacher = _teacher(objective)
    relevance = objective.relevance
    assert relevance is not None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
        collate_fn=_collate_strict,
    )
    rows: list[Tensor] = []
    with _progress(progress, len(dataset)) as advance:  # type: ignore[arg-type]
        for batch in loader:
            images, targets = batch[0].to(device), batch[1].to(device)
            rows.append(relevance(teacher, images, targets).detach().float().cpu())
            advance(images.shape[0])
    return torch.cat(rows)


@contextmanager
def _progress(show: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (with rate and time left) over ``total`` images, or a no-op."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(*Progress.get_default_columns(), console=Console(stderr=True)) as bar:
        task = bar.add_task("teacher relevance", total=total)
        yield lambda n: bar.advance(task, n)


def _collate_strict(items: list[Any]) -> Any:
    if any(item is None for item in items):
        raise ValueError(
            "an image of the training set could not be read; a cached teacher relevance needs "
            "every training image. Fix or remove the unreadable files (see the skip log)."
        )
    return torch.utils.data.default_collate(items)


def open_or_build_teacher_relevance(
    objective: CounterfactualObjective,
    dataset: Dataset[Any],
    cache_dir: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    build: bool = True,
    progress: bool = True,
) -> Tensor:
    """Read the teacher's cached map of ``dataset``, computing and storing it if absent.

    The cache directory is named after the key, so a changed model, weights, image size
    or file builds a new one; an existing directory that does not match its key or is
    truncated raises :class:`~cfmask.data.relevance_cache.StaleRelevanceCacheError`
    (see :mod:`cfmask.data.relevance_cache` for why it is refused, not rebuilt).

    Args:
        objective: Objective with a frozen initial teacher and a relevance map.
        dataset: The training set (an :class:`~cfmask.data.IndexedDataset` is unwrapped).
        cache_dir: Root of the caches.
        device: Where the teacher runs when the map is built.
        batch_size: Images per relevance pass when building.
        num_workers: Loader processes when building.
        build: Build when missing (``False`` on the non-zero ranks of a distributed run,
            which read what rank 0 built).
        progress: Progress bar while building.

    Returns:
        ``(len(dataset), N)`` float16 map on the CPU.
    """
    inner = dataset.dataset if isinstance(dataset, IndexedDataset) else dataset
    key = teacher_relevance_key(objective, inner)
    name = str(getattr(inner, "name", type(inner).__name__))
    directory = relevance_cache_path(cache_dir, name, key)
    if build and not directory.exists():
        _log.info("computing the teacher's relevance map of %s into %s", name, directory)
        scores = compute_teacher_relevance(
            objective,
            inner,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        )
        write_relevance_cache(directory, key, scores)
    return read_relevance_cache(directory, key)


def training_set_of(trainer: pl.Trainer) -> IndexedDataset:
    """The training set of a started fit, which must yield sample indices.

    Args:
        trainer: A trainer whose training loader is set up (``on_train_start`` or later).

    Returns:
        The loader's :class:`~cfmask.data.IndexedDataset`.

    Raises:
        ValueError: When the training loader is not one ``DataLoader`` over an
            :class:`~cfmask.data.IndexedDataset`.
    """
    loader = trainer.train_dataloader
    dataset = getattr(loader, "dataset", None)
    if not isinstance(dataset, IndexedDataset):
        raise ValueError(
            "relevance_source='cached_teacher' looks each image's map up by its index, so the "
            "training batches must end with the sample indices: use a cfmask datamodule (it "
            "adds them) or wrap your training set in cfmask.data.IndexedDataset."
        )
    return dataset


def request_indexed_batches(datamodule: Any) -> None:
    """Ask a datamodule for training batches that end with sample indices.

    Datamodules that support it have an ``index_training_batches`` attribute
    (:class:`~cfmask.data.ImageFolderDataModule`,
    :class:`~cfmask.data.ImageNetOODDataModule`,
    :class:`~cfmask.data.synthetic.SyntheticDataModule`); with others (and with plain
    loaders) the training set must already be an :class:`~cfmask.data.IndexedDataset`.

    Args:
        datamodule: The fit's datamodule, or ``None``.

    Raises:
        ValueError: When the datamodule augments its training images: the teacher's map
            of an augmented view is not a fixed function of the file.
    """
    if datamodule is None:
        return
    if getattr(datamodule, "augment", False):
        raise ValueError(
            "relevance_source='cached_teacher' computes each training image's map once, "
            "which is only valid without training augmentation; set augment=False on the "
            "datamodule (the paper trains without augmentation) or use "
            "relevance_source='teacher'."
        )
    if hasattr(datamodule, "index_training_batches"):
        datamodule.index_training_batches = True


def cached_relevance_for_fit(
    objective: CounterfactualObjective,
    trainer: pl.Trainer,
    cache_dir: str | os.PathLike[str] | None,
    batch_size: int = 64,
) -> Tensor:
    """The teacher's map of a fit's training set, on the run's device, built if missing.

    Rank 0 builds a missing cache on its device (with the datamodule's ``num_workers``
    loader processes, and a progress bar when the trainer shows one); every rank then
    reads it after a barrier.

    Args:
        objective: The fit's objective (frozen initial teacher, relevance map).
        trainer: A trainer at ``on_train_start`` or later.
        cache_dir: Root of the caches; ``None`` takes the datamodule's ``cache_dir``.
        batch_size: Images per relevance pass when building.

    Returns:
        ``(num_samples, N)`` float16 map on the module's device.

    Raises:
        ValueError: When no cache directory is known, or the training batches carry no
            sample indices (see :func:`training_set_of`).
    """
    dataset = training_set_of(trainer)
    if cache_dir is None:
        cache_dir = getattr(getattr(trainer, "datamodule", None), "cache_dir", None)
    if cache_dir is None:
        raise ValueError(
            "relevance_source='cached_teacher' needs a directory for the cached maps: set "
            "the model's relevance_cache_dir, or the datamodule's cache_dir (the maps are "
            "stored next to the crop caches)."
        )
    device = trainer.strategy.root_device
    scores = None
    if trainer.global_rank == 0:
        scores = open_or_build_teacher_relevance(
            objective,
            dataset,
            cache_dir,
            device=device,
            batch_size=batch_size,
            num_workers=int(getattr(getattr(trainer, "datamodule", None), "num_workers", 0)),
            progress=trainer.progress_bar_callback is not None,
        )
    trainer.strategy.barrier("cfmask-teacher-relevance")
    if scores is None:
        scores = open_or_build_teacher_relevance(objective, dataset, cache_dir, build=False)
    return scores.to(device)

"""The base of the image datamodules: loaders, crop caches and evaluation-set bookkeeping.

Both datamodules share one loader policy (:mod:`cfmask.data.loading`):
``num_workers`` processes (default ``min(8, CPUs)``), pinned memory and
persistent workers when training on a GPU, ``drop_last=True`` for training (the
counterfactual refill pairs images inside equal-size batches), and a fixed
test-loader order: the ID set first, then the OOD sets, with names in
``test_set_names`` and per-set protocol in ``eval_sets`` (index ``i``
describes ``dataloader_idx == i``).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from cfmask.data.cache import open_or_build_cache
from cfmask.data.folder import FolderImageDataset, SkipLog
from cfmask.data.loading import LoaderConfig, build_loader
from cfmask.data.relevance_cache import IndexedDataset
from cfmask.data.transforms import eval_transform, train_transform
from cfmask.evaluation.metrics import EvalSet

__all__ = ()


def loader_config_from(arguments: Mapping[str, Any]) -> LoaderConfig:
    """The :class:`LoaderConfig` of a datamodule constructor's keyword arguments.

    Every datamodule takes the loader settings as flat constructor keywords (so
    YAML recipes and LightningCLI see them) and passes its ``locals()`` here;
    the settings are picked out by the config's field names.

    Args:
        arguments: The constructor's arguments by name (at least every field of
            :class:`LoaderConfig`).

    Returns:
        The (validated) loader config.
    """
    names = [field.name for field in dataclasses.fields(LoaderConfig)]
    return LoaderConfig(**{name: arguments[name] for name in names})


class ImageDataModuleBase(LightningDataModule):
    """Base of cfmask's image datamodules: loaders, caching and evaluation-set bookkeeping.

    :class:`~cfmask.data.ImageNetOODDataModule` and
    :class:`~cfmask.data.ImageFolderDataModule` derive from it; a subclass builds
    its splits in ``setup`` and names its ID set in ``id_name``.

    Args:
        loader_config: Batch size, workers, image size, interpolation, augmentation
            and caching (see :class:`~cfmask.data.LoaderConfig`).
    """

    id_name: str

    def __init__(self, loader_config: LoaderConfig) -> None:
        super().__init__()
        self._loader_config = loader_config.resolved()
        self.train_tf = train_transform(self.image_size, self.interpolation, self.augment)
        self.eval_tf = eval_transform(self.image_size, self.interpolation)
        self._skip_dir = (
            Path(tempfile.mkdtemp(prefix="cfmask-skipped-")) if self.skip_corrupt else None
        )
        self.train_set: Dataset[Any] | None = None
        self.val_set: Dataset[Any] | None = None
        self.test_sets: dict[str, Dataset[Any]] = {}
        self._eval_sets: dict[str, EvalSet] = {}
        #: Training batches end with the ``(B,)`` sample indices (set by a fine-tuner
        #: with ``relevance_source="cached_teacher"``; see :class:`IndexedDataset`).
        self.index_training_batches = False

    # -- loader settings ----------------------------------------------------------
    @property
    def loader_config(self) -> LoaderConfig:
        """The loader settings, with ``eval_batch_size`` and ``num_workers`` resolved."""
        return self._loader_config

    @property
    def batch_size(self) -> int:
        """Training batch size (settable, e.g. by Lightning's batch-size finder)."""
        return self._loader_config.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._loader_config = dataclasses.replace(self._loader_config, batch_size=value)

    @property
    def eval_batch_size(self) -> int:
        """Validation/test batch size."""
        size = self._loader_config.eval_batch_size
        assert size is not None  # resolved in __init__
        return size

    @property
    def num_workers(self) -> int:
        """Loader processes."""
        workers = self._loader_config.num_workers
        assert workers is not None  # resolved in __init__
        return workers

    @property
    def image_size(self) -> int:
        """Crop side, in pixels."""
        return self._loader_config.image_size

    @property
    def interpolation(self) -> str:
        """Resize interpolation."""
        return self._loader_config.interpolation

    @property
    def augment(self) -> bool:
        """Whether training images are lightly augmented."""
        return self._loader_config.augment

    @property
    def pin_memory(self) -> bool | None:
        """Pin host memory; ``None`` → on when training on a GPU."""
        return self._loader_config.pin_memory

    @property
    def persistent_workers(self) -> bool | None:
        """Keep workers between epochs; ``None`` → on when training on a GPU."""
        return self._loader_config.persistent_workers

    @property
    def skip_corrupt(self) -> bool:
        """Whether undecodable images are skipped and reported instead of raising."""
        return self._loader_config.skip_corrupt

    @property
    def cache_dir(self) -> str | None:
        """Directory of the crop caches, or ``None``."""
        return self._loader_config.cache_dir

    # -- helpers ------------------------------------------------------------------
    def _skip_log(self, name: str) -> SkipLog | None:
        return SkipLog(self._skip_dir / f"{name}.txt") if self._skip_dir is not None else None

    def skipped_images(self) -> dict[str, list[str]]:
        """Set name → paths of images skipped as undecodable (``skip_corrupt=True``)."""
        if self._skip_dir is None:
            return {}
        out = {p.stem: SkipLog(p).read() for p in sorted(self._skip_dir.glob("*.txt"))}
        return {k: v for k, v in out.items() if v}

    def _on_gpu(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            from lightning.pytorch.accelerators import CUDAAccelerator

            return isinstance(trainer.accelerator, CUDAAccelerator)
        return torch.cuda.is_available()

    def _maybe_cache(self, ds: FolderImageDataset) -> Dataset[Any]:
        if self.cache_dir is None:
            return ds
        return open_or_build_cache(
            ds, self.cache_dir, self.image_size, self.interpolation, self.num_workers
        )

    def _register(self, ds: FolderImageDataset, is_id: bool = False) -> None:
        self._eval_sets[ds.name] = EvalSet(
            name=ds.name,
            class_subset=ds.class_subset,
            multi_label=ds.multi_label,
            num_classes=ds.num_classes,
            num_samples=len(ds),
            expected_samples=ds.expected_count,
            is_id=is_id,
        )

    def _loader(self, ds: Dataset[Any], train: bool) -> DataLoader[Any]:
        return build_loader(ds, self._loader_config, train=train, on_gpu=self._on_gpu())

    # -- public API ---------------------------------------------------------------
    @property
    def test_set_names(self) -> list[str]:
        """Names of the test loaders, in :meth:`test_dataloader` order (ID first)."""
        return list(self.test_sets)

    @property
    def eval_sets(self) -> list[EvalSet]:
        """Protocol of each test loader (same order as :attr:`test_set_names`)."""
        return [self._eval_sets[n] for n in self.test_sets]

    @property
    def val_eval_set(self) -> EvalSet | None:
        """Protocol of the validation loader (all classes, single-label)."""
        return self._eval_sets.get("val")

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled training batches of ``batch_size`` (last incomplete batch dropped).

        The loader is a :class:`~cfmask.data.resumable.ResumableDataLoader`: the
        order of each epoch is fixed by the run's seed and the epoch, and a run
        resumed from a checkpoint saved inside an epoch continues with the next batch.
        With :attr:`index_training_batches`, each batch ends with its sample indices.
        """
        if self.train_set is None:
            raise RuntimeError("call setup('fit') first")
        if self.index_training_batches:
            return self._loader(IndexedDataset(self.train_set), train=True)
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader[Any]:
        """The held-out validation split, for best-checkpoint selection."""
        if self.val_set is None:
            raise RuntimeError("call setup('fit') or setup('validate') first")
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> list[DataLoader[Any]]:
        """One loader per test set: ID first, then the OOD sets (see :attr:`eval_sets`)."""
        if not self.test_sets:
            raise RuntimeError("call setup('test') first")
        return [self._loader(ds, train=False) for ds in self.test_sets.values()]

    def predict_dataloader(self) -> list[DataLoader[Any]]:
        """Same loaders as :meth:`test_dataloader`."""
        return self.test_dataloader()

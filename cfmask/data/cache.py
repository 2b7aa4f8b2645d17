"""Optional on-disk cache of the deterministic centre crops of an evaluation set.

Without augmentation an image's network input is a fixed function of the file,
so decoding and resizing can be done once. The cache stores every sample's
crop as ``uint8`` in one raw memory-mapped array of shape ``(N, S, S, 3)``
(``S * S * 3`` bytes per image: 150,528 at 224 px), for a set with object
masks (:mod:`cfmask.data.masks`) each mask's crop as ``0``/``1`` in a second
array of shape ``(N, S, S)`` (``S * S`` more bytes per image), plus the class index of
each sample, which samples could not be decoded, and a ``meta.json`` that is
written last (its presence marks a complete cache). Reading a cached sample
gives exactly the tensor the uncached path gives, because ``ToTensor`` is
``uint8 / 255`` too.

The cache is keyed by set name, image size, interpolation, a hash of the
sample paths and the masks folder, so a changed set, split seed, transform or
masks folder builds a new cache instead of serving stale crops.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cfmask.data.folder import CorruptImageError, FolderImageDataset
from cfmask.data.roots import user_path

__all__ = ("CachedImageDataset", "build_cache", "cache_path", "open_or_build_cache")

_log = logging.getLogger(__name__)
_IMAGES = "images.u8"
_MASKS = "masks.u8"


def cache_path(
    dataset: FolderImageDataset,
    cache_dir: str | os.PathLike[str],
    image_size: int,
    interpolation: str,
) -> Path:
    """Directory where ``dataset``'s cache lives for this image size and interpolation.

    Args:
        dataset: The set to cache.
        cache_dir: Root of all caches.
        image_size: Crop side in pixels.
        interpolation: Resize interpolation name.

    Returns:
        ``<cache_dir>/<name>-<size>px-<interpolation>-<hash>``.
    """
    h = hashlib.sha1()
    h.update(f"{dataset.name}|{image_size}|{interpolation}|{type(dataset).__name__}".encode())
    h.update(str(getattr(dataset, "border", 0)).encode())
    if dataset.mask_root is not None:  # sets without masks keep the keys they always had
        h.update(f"|masks:{dataset.mask_root}".encode())
    for s in dataset.samples:
        h.update(f"{s.path}\t{s.class_index}\n".encode())
    return (
        user_path(cache_dir) / f"{dataset.name}-{image_size}px-{interpolation}-{h.hexdigest()[:16]}"
    )


class _Uint8Crops(Dataset[tuple[int, Any]]):
    """Yields ``(index, ((S, S, 3) uint8 image, (S, S) uint8 mask or None) or None)``."""

    def __init__(self, dataset: FolderImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        assert self.dataset.transform is not None
        try:
            x, mask = self.dataset.load_transformed(index)
        except CorruptImageError:
            if not self.dataset.skip_corrupt:
                raise
            return index, None
        image = (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return index, (image, None if mask is None else mask.to(torch.uint8).numpy())


def _keep_list(batch: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return batch


def build_cache(
    dataset: FolderImageDataset,
    directory: str | os.PathLike[str],
    image_size: int,
    num_workers: int = 0,
    batch_size: int = 64,
) -> Path:
    """Decode, transform and store every sample of ``dataset`` in ``directory``.

    Args:
        dataset: A set whose ``transform`` is the deterministic evaluation transform.
        directory: Target directory (see :func:`cache_path`); replaced if incomplete.
        image_size: Crop side ``S`` the transform produces.
        num_workers: Decoding processes.
        batch_size: Samples per worker task.

    Returns:
        ``directory``.

    Raises:
        CorruptImageError: On an undecodable image unless ``dataset.skip_corrupt``.
    """
    out = Path(directory)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(dataset)
    mm = np.memmap(tmp / _IMAGES, dtype=np.uint8, mode="w+", shape=(n, image_size, image_size, 3))
    has_masks = dataset.mask_root is not None
    masks = (
        np.memmap(tmp / _MASKS, dtype=np.uint8, mode="w+", shape=(n, image_size, image_size))
        if has_masks
        else None
    )
    valid = np.ones(n, dtype=bool)
    loader = DataLoader(
        _Uint8Crops(dataset),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_keep_list,
    )
    for batch in loader:
        for i, crops in batch:
            if crops is None:
                valid[i] = False
                continue
            mm[i] = crops[0]
            if masks is not None:
                masks[i] = crops[1]
    mm.flush()
    del mm
    if masks is not None:
        masks.flush()
        del masks
    np.save(tmp / "valid.npy", valid)
    np.save(tmp / "class_index.npy", dataset.class_indices.numpy())
    meta = {
        "name": dataset.name,
        "num_samples": n,
        "image_size": image_size,
        "num_invalid": int((~valid).sum()),
        "masks": has_masks,
    }
    (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    gb = n * image_size * image_size * 3 / 1e9
    _log.info("cached %s: %d crops, %.2f GB in %s", dataset.name, n, gb, out)
    return out


class CachedImageDataset(Dataset[Any]):
    """Serves a :class:`FolderImageDataset`'s crops from its cache.

    Items are ``(image (3, S, S) float in [0, 1], target)``, or ``(image,
    target, mask (S, S) bool)`` for a set with object masks, identical to the
    uncached set's. A sample that could not be decoded when the cache was built
    is read from its file again through ``dataset``, so it behaves exactly as
    without the cache: :class:`~cfmask.data.folder.CorruptImageError` unless
    ``dataset.skip_corrupt``, else ``None`` (recorded in the set's skip log and
    dropped by :func:`~cfmask.data.folder.collate_skipping`); a file replaced by
    a readable image since then is served from disk.

    Args:
        dataset: The uncached set (gives targets, name and the skip log).
        directory: A complete cache built by :func:`build_cache`.
    """

    def __init__(self, dataset: FolderImageDataset, directory: str | os.PathLike[str]) -> None:
        self.dataset = dataset
        self.directory = Path(directory)
        meta = json.loads((self.directory / "meta.json").read_text())
        if meta["num_samples"] != len(dataset):
            raise ValueError(
                f"cache {directory} holds {meta['num_samples']} samples, the set {len(dataset)}"
            )
        self.image_size = int(meta["image_size"])
        self.has_masks = bool(meta.get("masks", False))
        if self.has_masks != (dataset.mask_root is not None):
            raise ValueError(
                f"cache {directory} was built {'with' if self.has_masks else 'without'} object "
                f"masks but the set {dataset.name} has "
                f"{'none' if dataset.mask_root is None else 'them'}; open the set's own cache "
                "with open_or_build_cache (its key includes the masks folder)."
            )
        self.valid = np.load(self.directory / "valid.npy")
        self.class_index = np.load(self.directory / "class_index.npy")
        self._mm: np.memmap[Any, np.dtype[np.uint8]] | None = None
        self._masks: np.memmap[Any, np.dtype[np.uint8]] | None = None

    # Forward the attributes the datamodule and metrics read.
    @property
    def name(self) -> str:
        """Set name."""
        return self.dataset.name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mm"] = state["_masks"] = None  # each worker opens its own maps
        return state

    def __getitem__(self, index: int) -> Any:
        if not self.valid[index]:
            # The file could not be decoded when the cache was built (with skip_corrupt).
            # Read it through the uncached set: that raises CorruptImageError or records
            # the skip exactly as an uncached run does, and a file replaced since the
            # build is decoded and served instead of the stale verdict.
            return self.dataset[index]
        s = self.image_size
        if self._mm is None:
            self._mm = np.memmap(
                self.directory / _IMAGES, dtype=np.uint8, mode="r", shape=(len(self), s, s, 3)
            )
        x = torch.from_numpy(np.array(self._mm[index])).permute(2, 0, 1).float().div(255)
        target = self.dataset.targets[int(self.class_index[index])]
        if not self.has_masks:
            return x, target
        if self._masks is None:
            self._masks = np.memmap(
                self.directory / _MASKS, dtype=np.uint8, mode="r", shape=(len(self), s, s)
            )
        return x, target, torch.from_numpy(np.array(self._masks[index]) != 0)


def open_or_build_cache(
    dataset: FolderImageDataset,
    cache_dir: str | os.PathLike[str],
    image_size: int,
    interpolation: str,
    num_workers: int = 0,
) -> CachedImageDataset:
    """Open ``dataset``'s cache, building it first if it is missing or incomplete.

    Args:
        dataset: Set with the deterministic evaluation transform.
        cache_dir: Root of all caches.
        image_size: Crop side.
        interpolation: Resize interpolation name (part of the cache key).
        num_workers: Decoding processes used when building.

    Returns:
        The cached view of ``dataset``.
    """
    d = cache_path(dataset, cache_dir, image_size, interpolation)
    if not (d / "meta.json").is_file():
        build_cache(dataset, d, image_size, num_workers=num_workers)
    return CachedImageDataset(dataset, d)

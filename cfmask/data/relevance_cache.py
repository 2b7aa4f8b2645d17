"""Storage of a per-image relevance map computed once per training set.

Without training augmentation (the paper's setting: Xiao et al., CVPR 2023,
arXiv:2303.03052, Sec. 4, and the reference code's ``transforms_train =
transforms_test``) every training image reaches the network as a fixed tensor, so a
relevance map computed by a *frozen* model is a fixed function of the image and its
label. :mod:`cfmask.training.teacher_relevance` computes it once with the frozen pre-trained
teacher; this module only stores, checks and serves it, and knows nothing about models.

Format: one directory per (set, key), next to the crop caches
(:mod:`cfmask.data.cache`), holding

* ``relevance.f16``: the raw ``float16`` array of shape ``(num_samples,
  num_patches)``, row ``i`` for sample ``i`` of the set, columns row-major over the
  patch grid (``2 * num_patches`` bytes per image: 98 at ViT-B/32, 224 px);
* ``meta.json``, written last: the full :class:`RelevanceCacheKey`, the shape and the
  SHA-256 of ``relevance.f16``.

Policy. The directory name carries a digest of the key (model, weights, image shape,
the set's files), so a change of any of them opens another directory, which is built
afresh: a changed model or file is *rebuilt*, never served from the old map. A build
writes into a temporary directory renamed into place at the end, so an interrupted
build leaves no directory behind and is simply built again. A directory that exists
but does not check out (its recorded key differs from the one asked for, the array's
size or checksum is wrong) is *refused* with :class:`StaleRelevanceCacheError`
instead of being rebuilt silently: it can only arise from files changed outside
cfmask (a copied or renamed cache, a partial copy, a disk fault), and rebuilding costs
a full pass of the teacher over the set, so the user decides (delete the directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from cfmask.data.cache import CachedImageDataset
from cfmask.data.folder import FolderImageDataset
from cfmask.data.roots import user_path

__all__ = (
    "IndexedDataset",
    "RelevanceCacheKey",
    "StaleRelevanceCacheError",
    "dataset_fingerprint",
    "read_relevance_cache",
    "relevance_cache_path",
    "state_dict_digest",
    "write_relevance_cache",
)

SCORES_FILE = "relevance.f16"
META_FILE = "meta.json"
_FORMAT = 1


class StaleRelevanceCacheError(RuntimeError):
    """A relevance cache exists but does not match what it is opened for, or is damaged."""


class IndexedDataset(Dataset[Any]):
    """A set whose items end with their own index, so a step can look up per-image data.

    Item ``i`` is ``(*dataset[i], i)``: ``(image, target, i)``, or ``(image, target,
    mask, i)`` for a set with object masks. A skipped (``None``) item stays ``None``, so
    :func:`~cfmask.data.folder.collate_skipping` drops it as before. Batches then end
    with a ``(B,)`` int64 tensor of sample indices.

    Args:
        dataset: Any map-style set with a length.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.zeros(3, 2), torch.arange(3)))
        >>> ds[2][1].item(), ds[2][2]
        (2, 2)
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        if isinstance(dataset, IndexedDataset):
            raise TypeError("the set already yields its indices; do not wrap it twice")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if item is None:
            return None
        if isinstance(item, tuple | list):
            return (*item, index)
        return (item, index)


@dataclass(frozen=True)
class RelevanceCacheKey:
    """Everything a cached relevance map depends on; stored in the cache's ``meta.json``.

    Attributes:
        model: Digest of the model and relevance-map configuration.
        weights: Digest of the frozen model's weights (:func:`state_dict_digest`).
        image_shape: ``(C, H, W)`` of the images the set serves.
        data: Digest of the set (:func:`dataset_fingerprint`).
        num_samples: Rows of the map (images in the set).
        num_patches: Columns of the map (cells of the patch grid).
    """

    model: str
    weights: str
    image_shape: tuple[int, int, int]
    data: str
    num_samples: int
    num_patches: int

    def as_dict(self) -> dict[str, Any]:
        """The key as JSON-ready data."""
        out = asdict(self)
        out["image_shape"] = list(self.image_shape)
        return out

    def digest(self) -> str:
        """SHA-256 hex digest of the whole key (names the cache directory)."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def state_dict_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict: every entry's name, dtype, shape and bytes, in name order.

    Args:
        state: Tensors by name (e.g. a frozen model's ``state_dict()``).

    Returns:
        The hex digest; equal exactly when the weights are bit-identical.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{value.dtype}|{tuple(value.shape)}\n".encode())
        value = value.reshape(-1)  # a 0-dim tensor cannot be viewed as bytes
        h.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return h.hexdigest()


def _folder_fingerprint(dataset: FolderImageDataset, h: Any) -> None:
    h.update(f"folder|{dataset.name}|{dataset.transform!r}\n".encode())
    for s in dataset.samples:
        st = os.stat(s.path)
        h.update(f"{s.path}\t{s.class_index}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())


def _tensor_leaves(item: Any) -> Iterable[Tensor]:
    if isinstance(item, Tensor):
        yield item
    elif isinstance(item, tuple | list):
        for part in item:
            yield from _tensor_leaves(part)
    elif isinstance(item, int | float | bool):
        yield torch.tensor(item)


def dataset_fingerprint(dataset: Dataset[Any]) -> str:
    """Digest of a training set's content, as the cache key's ``data``.

    A set backed by files (:class:`~cfmask.data.FolderImageDataset`, also behind a
    crop cache or a ``Subset``) is fingerprinted by its transform and, per sample, the
    path, class index, size and modification time of the file: changing, adding,
    removing or relabelling an image changes the digest without reading any image. Any
    other set (in-memory tensors) is fingerprinted by the bytes of every item, which
    reads the whole set once.

    Args:
        dataset: The set, with or without an :class:`IndexedDataset` wrapper.

    Returns:
        A SHA-256 hex digest.
    """
    h = hashlib.sha256()
    ds: Any = dataset.dataset if isinstance(dataset, IndexedDataset) else dataset
    while isinstance(ds, Subset):
        h.update(f"subset|{list(ds.indices)}\n".encode())
        ds = ds.dataset
    if isinstance(ds, CachedImageDataset):
        ds = ds.dataset
    if isinstance(ds, FolderImageDataset):
        _folder_fingerprint(ds, h)
        return h.hexdigest()
    items: Iterable[Any]
    if isinstance(ds, TensorDataset):
        h.update(b"tensors\n")
        items = [ds.tensors]
    else:
        h.update(f"items|{type(ds).__name__}|{len(ds)}\n".encode())
        items = (ds[i] for i in range(len(ds)))
    for item in items:
        for t in _tensor_leaves(item):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
            t = t.reshape(-1)
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def relevance_cache_path(
    cache_dir: str | os.PathLike[str], name: str, key: RelevanceCacheKey
) -> Path:
    """Directory of the relevance cache of set ``name`` under ``key``.

    Args:
        cache_dir: Root of the caches (the datamodule's ``cache_dir``).
        name: Set name (readability only; the key decides).
        key: What the map depends on.

    Returns:
        ``<cache_dir>/relevance-<name>-<first 16 hex digits of key.digest()>``.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "set"
    return user_path(cache_dir) / f"relevance-{safe}-{key.digest()[:16]}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_relevance_cache(
    directory: str | os.PathLike[str], key: RelevanceCacheKey, scores: Tensor
) -> Path:
    """Store ``scores`` as fp16 under ``directory`` (atomically: temp dir, then rename).

    Args:
        directory: Target directory (see :func:`relevance_cache_path`); replaced.
        key: What the map depends on (written to ``meta.json``).
        scores: ``(num_samples, num_patches)`` relevance, any float dtype; stored as
            ``float16`` (values above 65504 would overflow and are refused).

    Returns:
        ``directory``.

    Raises:
        ValueError: When ``scores`` does not have the key's shape or is not finite in
            ``float16``.
    """
    expected = (key.num_samples, key.num_patches)
    if tuple(scores.shape) != expected:
        raise ValueError(f"relevance scores have shape {tuple(scores.shape)}, the key {expected}")
    half = scores.detach().to("cpu", torch.float16).contiguous()
    if not bool(torch.isfinite(half).all()):
        raise ValueError(
            "relevance scores are not finite in float16 (nan, or above 65504); the cached "
            "map cannot store them. Check the relevance map's output."
        )
    out = Path(directory)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    half.numpy().tofile(tmp / SCORES_FILE)
    meta = {
        "format": _FORMAT,
        "key": key.as_dict(),
        "dtype": "float16",
        "shape": list(expected),
        "sha256": _file_sha256(tmp / SCORES_FILE),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def read_relevance_cache(directory: str | os.PathLike[str], key: RelevanceCacheKey) -> Tensor:
    """Load a relevance cache, refusing one that does not match ``key`` or is damaged.

    Args:
        directory: A directory written by :func:`write_relevance_cache`.
        key: The key the caller expects.

    Returns:
        ``(num_samples, num_patches)`` float16 tensor on the CPU.

    Raises:
        FileNotFoundError: When ``directory`` holds no complete cache (no ``meta.json``).
        StaleRelevanceCacheError: When its recorded key differs from ``key`` (naming the
            fields), or its array is truncated or fails its checksum.
    """
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no complete relevance cache in {d} (no {META_FILE})")
    fix = f"Delete {d} and run again to rebuild it."
    try:
        meta = json.loads(meta_path.read_text())
        saved = meta["key"]
    except (ValueError, KeyError) as err:
        raise StaleRelevanceCacheError(
            f"relevance cache {d} has an unreadable {META_FILE} ({err}). {fix}"
        ) from None
    wanted = key.as_dict()
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differ:
        raise StaleRelevanceCacheError(
            f"relevance cache {d} was built for another {', '.join(differ)} than this run "
            f"asks for, so its maps would be stale. {fix}"
        )
    scores_path = d / SCORES_FILE
    expected_bytes = 2 * key.num_samples * key.num_patches
    size = scores_path.stat().st_size if scores_path.is_file() else 0
    if size != expected_bytes:
        raise StaleRelevanceCacheError(
            f"relevance cache {d} is truncated: {SCORES_FILE} has {size} bytes, "
            f"{key.num_samples} images x {key.num_patches} patches need {expected_bytes}. {fix}"
        )
    if _file_sha256(scores_path) != meta.get("sha256"):
        raise StaleRelevanceCacheError(
            f"relevance cache {d} fails its checksum ({SCORES_FILE} changed after it was "
            f"written). {fix}"
        )
    array = np.fromfile(scores_path, dtype=np.float16).reshape(key.num_samples, key.num_patches)
    return torch.from_numpy(array)

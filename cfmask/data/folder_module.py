"""A user's own image-classification data in class folders, with named OOD folders.

The classes are the training folder names; a missing validation or test folder
is carved from the training images (:mod:`cfmask.data.splits`); every OOD
folder must use (a subset of) the same class folder names.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cfmask.data.base import _ImageDataModule
from cfmask.data.folder import (
    DataLayoutError,
    DataLayoutWarning,
    FolderImageDataset,
    SkipLog,
    has_images,
    list_class_folders,
    list_images,
)
from cfmask.data.loading import LoaderConfig
from cfmask.data.roots import user_path
from cfmask.data.splits import carve_subset, stratified_split

__all__ = ("ImageFolderDataModule",)

_log = logging.getLogger(__name__)


def _folder_set(
    name: str,
    root: Path,
    class_to_idx: Mapping[str, int],
    transform: Any,
    skip_corrupt: bool,
    skip_log: SkipLog | None,
    restrict: bool,
) -> FolderImageDataset:
    """A user folder whose class folders are (a subset of) the ID classes."""
    if not root.is_dir():
        raise DataLayoutError(
            f"{name}: directory not found: {root}. Expected layout: {root}/<class name>/<images>"
        )
    found = [f for f in list_class_folders(root) if list_images(root / f)]
    unknown = [f for f in found if f not in class_to_idx]
    if unknown:
        known = sorted(class_to_idx)
        raise DataLayoutError(
            f"{name}: class folder(s) under {root} are not classes of the ID set: "
            f"{', '.join(unknown[:5])}. Known classes: {', '.join(known[:10])}"
            + (" …" if len(known) > 10 else "")
        )
    if not found:
        raise DataLayoutError(f"{name}: no class folder with images under {root}")
    targets = [class_to_idx[f] for f in found]
    subset = None
    if restrict and len(found) < len(class_to_idx):
        subset = torch.tensor(sorted(targets), dtype=torch.long)
    return FolderImageDataset(
        name,
        root,
        found,
        targets,
        transform=transform,
        skip_corrupt=skip_corrupt,
        skip_log=skip_log,
        num_classes=len(class_to_idx),
        class_subset=subset,
        layout=f"{root}/<class name>/<images>",
    )


def _warn_empty_classes(name: str, root: Path, classes: Sequence[str]) -> None:
    """Warn, naming them, about class folders without a single image."""
    empty = [c for c in classes if not has_images(root / c)]
    if empty:
        msg = (
            f"{name}: class folder(s) {', '.join(repr(c) for c in empty)} under {root} hold "
            f"no images; each is still a class (the head gets {len(classes)} outputs) but "
            "nothing trains or tests it. Add images or remove the folder(s)."
        )
        _log.warning(msg)
        warnings.warn(msg, DataLayoutWarning, stacklevel=3)


class ImageFolderDataModule(_ImageDataModule):
    """A user's own ID dataset in class folders, plus any number of named OOD folders.

    Layout: ``root/train/<class>/…`` with optional ``root/val`` (or ``valid``,
    ``validation``) and ``root/test``; or ``root/<class>/…`` directly. A missing
    validation or test part is carved from the training images with
    :func:`stratified_split`. Classes are the sorted training folder names;
    OOD folders must use the same folder names (all classes or a subset; a
    subset is scored over its own classes only, like ImageNet-R).

    Args:
        root: Dataset root (see layout above).
        train_dir: Training folder (overrides ``root``).
        val_dir: Validation folder.
        test_dir: ID test folder.
        ood_roots: OOD set name → folder, tested in the given order.
        class_names: Human-readable class names for the zero-shot head: a list in
            class order or a folder → name mapping (default: folder names with
            ``_`` replaced by spaces).
        id_name: Name of the ID test set in logs and results.
        val_size: Held-out count or fraction when there is no validation folder.
        test_size: Held-out count or fraction when there is no test folder.
        split_seed: Seed of those splits.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: Loader processes (default ``min(8, CPUs)``).
        image_size: Crop side.
        interpolation: Resize interpolation.
        augment: Light training augmentation.
        pin_memory: ``None`` → on when training on a GPU.
        persistent_workers: ``None`` → on when training on a GPU.
        skip_corrupt: Skip and report undecodable images instead of raising.
        cache_dir: Cache the evaluation sets' crops here.
    """

    def __init__(
        self,
        root: str | None = None,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        ood_roots: dict[str, str] | None = None,
        class_names: list[str] | dict[str, str] | None = None,
        id_name: str = "id",
        val_size: int | float = 0.1,
        test_size: int | float = 0.1,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        image_size: int = 224,
        interpolation: str = "bicubic",
        augment: bool = False,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        skip_corrupt: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            LoaderConfig(
                batch_size=batch_size,
                eval_batch_size=eval_batch_size,
                num_workers=num_workers,
                image_size=image_size,
                interpolation=interpolation,
                augment=augment,
                pin_memory=pin_memory,
                persistent_workers=persistent_workers,
                skip_corrupt=skip_corrupt,
                cache_dir=cache_dir,
            )
        )
        self.root = root
        self.ood_roots = dict(ood_roots or {})
        if id_name in self.ood_roots or "val" in self.ood_roots:
            raise ValueError(f"OOD set names must differ from id_name={id_name!r} and 'val'")
        self.id_name = id_name
        self.val_size = val_size
        self.test_size = test_size
        self.split_seed = split_seed
        self._dirs = self._find_dirs(root, train_dir, val_dir, test_dir)
        train_path = self._dirs["train"]
        assert train_path is not None
        self.classes = list_class_folders(train_path)
        if not self.classes:
            raise DataLayoutError(f"{id_name}: no class folders under {self._dirs['train']}")
        _warn_empty_classes(id_name, train_path, self.classes)
        self._class_names = self._names(class_names)

    @staticmethod
    def _find_dirs(
        root: str | None, train: str | None, val: str | None, test: str | None
    ) -> dict[str, Path | None]:
        r = user_path(root) if root is not None else None
        if r is not None and not r.is_dir():
            raise DataLayoutError(
                f"directory not found: {r}. Expected layout: "
                f"{r}/train/<class>/<images> (val/, test/ optional) or "
                f"{r}/<class>/<images>"
            )

        def pick(given: str | None, names: tuple[str, ...]) -> Path | None:
            if given is not None:
                if not user_path(given).is_dir():
                    raise DataLayoutError(f"directory not found: {given}")
                return user_path(given)
            for n in names:
                if r is not None and (r / n).is_dir():
                    return r / n
            return None

        t = pick(train, ("train",))
        if t is None:
            if r is None:
                raise DataLayoutError("ImageFolderDataModule needs root= or train_dir=")
            t = r
        return {
            "train": t,
            "val": pick(val, ("val", "valid", "validation")),
            "test": pick(test, ("test",)),
        }

    def _names(self, override: list[str] | dict[str, str] | None) -> list[str]:
        if override is None:
            return [c.replace("_", " ") for c in self.classes]
        if isinstance(override, dict):
            missing = [c for c in self.classes if c not in override]
            if missing:
                raise ValueError(f"class_names has no entry for folder(s) {missing[:5]}")
            return [override[c] for c in self.classes]
        if len(override) != len(self.classes):
            raise ValueError(
                f"class_names has {len(override)} names but there are "
                f"{len(self.classes)} class folders"
            )
        return list(override)

    @property
    def num_classes(self) -> int:
        """Number of ID classes."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Class names for the zero-shot head, in class-index order."""
        return list(self._class_names)

    def setup(self, stage: str | None = None) -> None:
        """Scan the folders, split where needed and validate the OOD classes."""
        if self.train_set is not None and self.test_sets:
            return
        c2i = {c: i for i, c in enumerate(self.classes)}
        train_dir = self._dirs["train"]
        assert train_dir is not None
        full = _folder_set(
            self.id_name + "_train",
            train_dir,
            c2i,
            None,
            self.skip_corrupt,
            self._skip_log("train"),
            restrict=False,
        )
        labels = full.class_indices
        rest = torch.arange(len(full))
        parts: dict[str, FolderImageDataset] = {}
        for part, size in (("test", self.test_size), ("val", self.val_size)):
            d = self._dirs[part]
            name = self.id_name if part == "test" else "val"
            if d is not None:
                parts[part] = _folder_set(
                    name,
                    d,
                    c2i,
                    self.eval_tf,
                    self.skip_corrupt,
                    self._skip_log(name),
                    restrict=False,
                )
            else:
                keep, held = stratified_split(labels[rest], size, self.split_seed)
                parts[part] = carve_subset(
                    full, name, rest[held], self.eval_tf, self._skip_log(name)
                )
                rest = rest[keep]
        self.train_set = carve_subset(
            full, self.id_name + "_train", rest, self.train_tf, full.skip_log
        )
        self.val_set = self._maybe_cache(parts["val"])
        self._register(parts["val"])
        sets = [parts["test"]] + [
            _folder_set(
                n,
                user_path(p),
                c2i,
                self.eval_tf,
                self.skip_corrupt,
                self._skip_log(n),
                restrict=True,
            )
            for n, p in self.ood_roots.items()
        ]
        self.test_sets = {}
        for i, ds in enumerate(sets):
            self._register(ds, is_id=i == 0)
            self.test_sets[ds.name] = self._maybe_cache(ds)

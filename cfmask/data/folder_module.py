"""A user's own image-classification data in class folders, with named OOD folders.

The classes are the training folder names; a missing validation or test folder
is carved from the training images (:mod:`cfmask.data.splits`); every OOD
folder must use (a subset of) the same class folder names. An optional masks
folder mirrors the ID images with one ground-truth object mask per image
(:mod:`cfmask.data.masks`); the ID sets' batches then carry the masks.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cfmask.data.base import ImageDataModuleBase, loader_config_from
from cfmask.data.folder import (
    DataLayoutError,
    DataLayoutWarning,
    FolderImageDataset,
    SkipLog,
    has_images,
    list_class_folders,
    list_images,
)
from cfmask.data.masks import MASK_SUFFIX, missing_masks
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
    mask_root: Path | None = None,
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
        mask_root=mask_root,
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


def _mask_folders(
    masks_root: Path, base: Path, parts: Mapping[str, Path | None], ood: Sequence[Path]
) -> dict[str, Path]:
    """The masks folder of each ID part: ``masks_root`` / (part folder below ``base``).

    Raises:
        DataLayoutError: If ``masks_root`` is missing, lies inside an images folder
            (its PNG files would be read as images), or a part folder is not
            below ``base``.
    """
    if not masks_root.is_dir():
        raise DataLayoutError(
            f"masks_root: directory not found: {masks_root}. It must mirror {base}: the "
            f"mask of {base}/<path>/<stem>.<ext> is {masks_root}/<path>/<stem>{MASK_SUFFIX}"
        )
    real = masks_root.resolve()
    for images in [p for p in parts.values() if p is not None] + list(ood):
        if real == images.resolve() or images.resolve() in real.parents:
            raise DataLayoutError(
                f"masks_root {masks_root} lies inside the images folder {images}, so its "
                "mask files would be read as images; keep the masks in a folder of their own."
            )
    out: dict[str, Path] = {}
    for part, folder in parts.items():
        if folder is None:
            continue
        try:
            out[part] = masks_root / folder.relative_to(base)
        except ValueError:
            raise DataLayoutError(
                f"masks_root mirrors {base}, but the {part} folder {folder} is not below it; "
                f"pass root= a folder that holds every part (train/val/test), or move the "
                f"{part} images under {base}."
            ) from None
    return out


def _check_masks(sets: Sequence[FolderImageDataset], masks_root: Path) -> None:
    """Raise, before any training, if an image has no mask or two images share one.

    Raises:
        DataLayoutError: Naming how many images lack a mask (with the first few
            image → expected mask pairs), or the images that map to one mask.
    """
    pairs = [(s.path, ds.mask_path(i)) for ds in sets for i, s in enumerate(ds.samples)]
    owners: dict[Path, list[Path]] = {}
    for image, mask in pairs:
        owners.setdefault(mask, []).append(image)
    shared = [images for images in owners.values() if len(images) > 1]
    if shared:
        raise DataLayoutError(
            f"{len(shared)} object mask path(s) under {masks_root} would each serve several "
            f"images (same folder and name, other extension), e.g. "
            f"{', '.join(str(p) for p in shared[0])}; rename the images so every image has "
            "its own stem."
        )
    missing = missing_masks(pairs)
    if missing:
        listed = "; ".join(f"{image} -> {mask}" for image, mask in missing[:5])
        other = [
            p
            for _, mask in missing[:5]
            for p in mask.parent.glob(mask.stem + ".*")
            if p.suffix.lower() != MASK_SUFFIX
        ]
        hint = (
            f" Masks must be {MASK_SUFFIX} files; found {', '.join(str(p) for p in other[:3])}."
            if other
            else ""
        )
        raise DataLayoutError(
            f"{len(missing)} of {len(pairs)} images have no object mask under {masks_root} "
            f"(image -> expected mask): {listed}" + (" …" if len(missing) > 5 else "") + "."
            f"{hint} Every ID image needs a mask at {masks_root}/<its path below the images "
            f"root>/<stem>{MASK_SUFFIX}; add the missing ones or remove those images."
        )


class ImageFolderDataModule(ImageDataModuleBase):
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
        skip_corrupt: Skip and report undecodable images (or masks) instead of raising.
        cache_dir: Cache the evaluation sets' crops (and their masks) here.
        masks_root: Folder of ground-truth object masks mirroring ``root`` (or
            ``train_dir`` when no ``root`` is given): the mask of
            ``<root>/<path>/<stem>.<ext>`` is ``<masks_root>/<path>/<stem>.png``, a
            single-channel image of the image's size whose nonzero pixels are the
            object. With it, the training, validation and ID test batches are
            ``(images, targets, masks)`` with ``(B, H, W)`` bool masks cropped and
            flipped exactly like the images (for
            :class:`~cfmask.masking.SegmentationMasker`); OOD batches stay
            ``(images, targets)``. Every ID image must have its mask (checked in
            :meth:`setup`).

    Raises:
        DataLayoutError: A folder is missing or malformed; ``masks_root`` is
            missing, lies inside an images folder, or does not mirror every ID
            part folder.
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
        masks_root: str | None = None,
    ) -> None:
        super().__init__(loader_config_from(locals()))
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
        self.masks_root = masks_root
        self._mask_dirs: dict[str, Path] = {}
        if masks_root is not None:
            base = user_path(root) if root is not None else train_path
            ood = [user_path(p) for p in self.ood_roots.values()]
            self._mask_dirs = _mask_folders(user_path(masks_root), base, self._dirs, ood)

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
            mask_root=self._mask_dirs.get("train"),
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
                    mask_root=self._mask_dirs.get(part),
                )
            else:
                keep, held = stratified_split(labels[rest], size, self.split_seed)
                parts[part] = carve_subset(
                    full, name, rest[held], self.eval_tf, self._skip_log(name)
                )
                rest = rest[keep]
        if self.masks_root is not None:
            own = [parts[p] for p in ("val", "test") if self._dirs[p] is not None]
            _check_masks([full, *own], user_path(self.masks_root))
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

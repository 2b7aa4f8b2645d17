"""Minimal class-folder image datasets shared by every set in :mod:`cfmask.data`.

The scanning follows torchvision's ``ImageFolder`` convention (one sub-folder
per class, files found recursively, everything sorted so the order never
depends on the file system), but every set decides itself how a folder name
becomes a target: ImageNet-V2's numeric folders, the 200-wnid subsets and
ObjectNet's multi-label targets all need something other than "index in the
sorted folder list". Errors name the set, the path tried and the expected
layout; nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from cfmask.data.errors import (
    CorruptImageError,
    DataLayoutError,
    DataLayoutWarning,
    TruncatedDatasetWarning,
)
from cfmask.data.masks import (
    ImageMaskTransform,
    ObjectMaskError,
    load_mask,
    mask_path,
    mask_to_tensor,
)

__all__ = (
    "IMAGE_EXTENSIONS",
    "CorruptImageError",
    "DataLayoutError",
    "DataLayoutWarning",
    "FolderImageDataset",
    "SkipLog",
    "TruncatedDatasetWarning",
    "collate_skipping",
    "has_images",
    "list_class_folders",
    "list_images",
    "load_rgb",
)

_log = logging.getLogger(__name__)

#: File suffixes (lower case) that count as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


def list_class_folders(root: Path) -> list[str]:
    """Return the sorted names of the sub-folders of ``root`` (hidden ones skipped).

    Args:
        root: Directory whose children are class folders.

    Returns:
        Folder names in lexicographic order, as ``ImageFolder`` sorts them.
    """
    with os.scandir(root) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    """Return every image file below ``folder``, recursively and in sorted order.

    Symbolic links are followed, but each real directory is read once and each
    real file listed once: a link back to an ancestor (``cat/loop -> .``) or two
    links to the same folder add nothing, so no image is counted twice and no
    copy of an image can land in two splits. The first path in sorted walk order
    is the one listed.

    Args:
        folder: One class folder.

    Returns:
        Paths whose suffix is in ``IMAGE_EXTENSIONS`` (case-insensitive).
    """
    found: list[Path] = []
    seen_files: set[tuple[int, int]] = set()
    for base, filenames in _walk_each_directory_once(folder):
        for name in filenames:
            file_id = _identity(base / name)
            if file_id is not None:  # a dangling link stays listed and fails loudly on load
                if file_id in seen_files:
                    continue
                seen_files.add(file_id)
            found.append(base / name)
    return found


def has_images(folder: Path) -> bool:
    """Whether ``folder`` holds at least one image file (stops at the first one).

    Args:
        folder: One class folder.

    Returns:
        ``True`` if :func:`list_images` would list something.
    """
    return any(names for _, names in _walk_each_directory_once(folder))


def _walk_each_directory_once(folder: Path) -> Iterator[tuple[Path, list[str]]]:
    """Walk ``folder`` following links, reading each real directory once.

    Yields:
        ``(directory, sorted image file names)`` in sorted walk order.
    """
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = _identity(dirpath)
        if here is None or here in seen_dirs:
            dirnames.clear()  # already read through another path
            continue
        seen_dirs.add(here)
        dirnames.sort()
        yield (
            Path(dirpath),
            sorted(
                f
                for f in filenames
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
            ),
        )


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(device, inode)`` of what ``path`` resolves to, or ``None`` if it is a dangling link."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file fully and convert it to RGB.

    Args:
        path: Image file.

    Returns:
        The decoded RGB image.

    Raises:
        CorruptImageError: If the file cannot be read or decoded; the message
            names the file.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise CorruptImageError(f"cannot decode image {path}: {err}") from err


class SkipLog:
    """Records images skipped because they could not be decoded.

    Works across DataLoader worker processes: each skip is appended as one line
    to a text file (short appends are atomic on POSIX), so the main process can
    read the full list at any time with :meth:`read`.

    Args:
        path: Text file that receives one skipped path per line.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def record(self, image: Path, reason: str) -> None:
        """Append one skipped image (and why) to the log."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{image}\t{reason.replace(chr(10), ' ')}\n")

    def read(self) -> list[str]:
        """Return the skipped image paths recorded so far (each at most once)."""
        if not self.path.exists():
            return []
        seen: dict[str, None] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line:
                seen.setdefault(line.split("\t", 1)[0], None)
        return list(seen)


@dataclass(frozen=True)
class _Sample:
    path: Path
    class_index: int


class FolderImageDataset(Dataset[Any]):
    """Images in class folders, with a per-set rule from class folder to target.

    Each sample is ``(image, target)`` where ``image`` is whatever ``transform``
    returns (a ``(3, H, W)`` float tensor in ``[0, 1]`` with the library's
    transforms) and ``target`` is ``targets[class_index]``: an ImageNet index
    (``int``) for most sets, or a multi-hot ``(num_classes,)`` tensor for
    multi-label sets such as ObjectNet. With ``mask_root``, each sample is
    ``(image, target, mask)``: the image's ground-truth object mask
    (:mod:`cfmask.data.masks`) moved through the same geometric steps as the
    image, an ``(H, W)`` bool tensor of the transformed image's height and width.

    Args:
        name: Set name used in messages and results (e.g. ``"imagenet_r"``).
        root: Directory that holds the class folders.
        folders: The class folders to read, in class-index order.
        targets: One target per entry of ``folders``.
        transform: Applied to the decoded RGB image.
        expected_count: Published number of images; a mismatch warns loudly.
        skip_corrupt: If ``True``, undecodable images are logged to
            ``skip_log`` and dropped from their batch (use
            :func:`collate_skipping`); otherwise they raise
            :class:`CorruptImageError`.
        skip_log: Where skipped files are recorded; required with ``skip_corrupt``.
        samples: Pre-computed ``(path, class_index)`` pairs (skips the scan).
        num_classes: Width of the classifier the targets refer to.
        class_subset: Sorted classifier indices this set is evaluated over
            (logits of the others are ignored), or ``None`` for all.
        multi_label: Whether targets are multi-hot ``(num_classes,)`` tensors.
        layout: Human description of the expected layout, used in errors.
        mask_root: Folder mirroring ``root`` that holds one object mask per
            image (``<mask_root>/<path below root>/<stem>.png``, see
            :func:`~cfmask.data.masks.mask_path`), or ``None`` for no masks.
            The dataset does not check that the files exist (the datamodule
            does, for all sets at once, in ``setup``).

    Raises:
        DataLayoutError: If ``root`` or one of ``folders`` is missing, or no
            image is found.
        ValueError: If ``mask_root`` is given with a ``transform`` that masks
            cannot follow (see :class:`~cfmask.data.masks.ImageMaskTransform`).
    """

    def __init__(
        self,
        name: str,
        root: str | os.PathLike[str],
        folders: Sequence[str],
        targets: Sequence[int | Tensor],
        transform: Callable[[Image.Image], Any] | None = None,
        expected_count: int | None = None,
        skip_corrupt: bool = False,
        skip_log: SkipLog | None = None,
        samples: Sequence[tuple[Path, int]] | None = None,
        num_classes: int = 1000,
        class_subset: Tensor | None = None,
        multi_label: bool = False,
        layout: str = "",
        mask_root: str | os.PathLike[str] | None = None,
    ) -> None:
        if len(folders) != len(targets):
            raise ValueError(f"{len(folders)} folders but {len(targets)} targets")
        if skip_corrupt and skip_log is None:
            raise ValueError("skip_corrupt=True needs a skip_log")
        self.name = name
        self.root = Path(root)
        self.folders = list(folders)
        self.targets = list(targets)
        self.transform = transform
        self.expected_count = expected_count
        self.skip_corrupt = skip_corrupt
        self.skip_log = skip_log
        self.num_classes = num_classes
        self.class_subset = class_subset
        self.multi_label = multi_label
        self.layout = layout
        self.mask_root = None if mask_root is None else Path(mask_root)
        self._paired = _paired_transform(transform) if mask_root is not None else None
        if samples is None:
            samples = self._scan()
        self.samples = [_Sample(Path(p), int(c)) for p, c in samples]
        if not self.samples:
            raise DataLayoutError(
                f"{name}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found under "
                f"{self.root}.{self._hint()}"
            )

    def _hint(self) -> str:
        return f" Expected layout: {self.layout}" if self.layout else ""

    def _scan(self) -> list[tuple[Path, int]]:
        if not self.root.is_dir():
            raise DataLayoutError(f"{self.name}: directory not found: {self.root}.{self._hint()}")
        out: list[tuple[Path, int]] = []
        for idx, folder in enumerate(self.folders):
            d = self.root / folder
            if not d.is_dir():
                raise DataLayoutError(f"{self.name}: class folder not found: {d}.{self._hint()}")
            out.extend((p, idx) for p in list_images(d))
        return out

    @property
    def truncated(self) -> bool:
        """Whether the set holds a different number of images than published."""
        return self.expected_count is not None and len(self) != self.expected_count

    def check_count(self) -> None:
        """Warn (``warnings.warn`` and the logger) if the image count is off."""
        if not self.truncated:
            return
        n, e = len(self), self.expected_count
        kind = "fewer" if e is not None and n < e else "more"
        msg = (
            f"{self.name}: found {n:,} images under {self.root} but the published set "
            f"has {e:,} ({kind} than expected). Accuracy on this set is NOT comparable "
            f"to published numbers; re-download or re-extract it."
        )
        _log.warning(msg)
        warnings.warn(msg, TruncatedDatasetWarning, stacklevel=2)

    @property
    def class_indices(self) -> Tensor:
        """``(len(self),)`` long tensor: the folder index of every sample."""
        return torch.tensor([s.class_index for s in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        """Decode sample ``index`` as an RGB image (before ``transform``).

        Raises:
            CorruptImageError: If the file cannot be decoded; names the set and file.
        """
        path = self.samples[index].path
        try:
            return load_rgb(path)
        except CorruptImageError as err:
            raise CorruptImageError(
                f"{self.name}: {err}. Replace or delete the file, or pass "
                f"skip_corrupt=True to skip (and report) undecodable images."
            ) from err

    def mask_path(self, index: int) -> Path:
        """Where sample ``index``'s object mask lives (needs ``mask_root``).

        Raises:
            ValueError: If the set has no ``mask_root``.
        """
        if self.mask_root is None:
            raise ValueError(f"{self.name}: this set has no object masks (mask_root=None)")
        return mask_path(self.samples[index].path, self.root, self.mask_root)

    def load_mask(self, index: int) -> Image.Image:
        """Decode sample ``index``'s object mask as a binary ``L`` image (255: object).

        Raises:
            CorruptImageError: If the mask file cannot be decoded; names the set and file.
            ObjectMaskError: If the mask has several channels.
        """
        try:
            return load_mask(self.mask_path(index))
        except CorruptImageError as err:
            raise CorruptImageError(
                f"{self.name}: {err} (the object mask of {self.samples[index].path}). Replace "
                "the mask file, or pass skip_corrupt=True to skip (and report) the image."
            ) from err

    def load_transformed(self, index: int) -> tuple[Any, Tensor | None]:
        """Decode and transform sample ``index`` (and its mask when the set has masks).

        Returns:
            ``(image, mask)``: the transformed image and its ``(H, W)`` bool object
            mask, or ``None`` for a set without masks.

        Raises:
            CorruptImageError: If the image or its mask cannot be decoded.
            ObjectMaskError: If the mask's size differs from the image's or it has
                several channels.
        """
        image = self.load(index)
        if self.mask_root is None:
            return (self.transform(image) if self.transform is not None else image), None
        mask = self.load_mask(index)
        if mask.size != image.size:
            raise ObjectMaskError(
                f"{self.name}: object mask {self.mask_path(index)} is {mask.size[0]}x"
                f"{mask.size[1]} px but its image {self.samples[index].path} is "
                f"{image.size[0]}x{image.size[1]} px; a mask must cover its image pixel for "
                "pixel. Save the mask at the image's size."
            )
        if self._paired is None:
            return image, mask_to_tensor(mask)
        return self._paired(image, mask)

    def __getitem__(self, index: int) -> Any:
        sample = self.samples[index]
        try:
            image, mask = self.load_transformed(index)
        except CorruptImageError as err:
            if not self.skip_corrupt or self.skip_log is None:
                raise
            self.skip_log.record(sample.path, str(err.__cause__ or err))
            _log.warning("%s: skipped undecodable image %s", self.name, sample.path)
            return None
        target = self.targets[sample.class_index]
        return (image, target) if mask is None else (image, target, mask)


def _paired_transform(
    transform: Callable[[Image.Image], Any] | None,
) -> ImageMaskTransform | None:
    """The image-and-mask version of ``transform`` (``None`` stays ``None``)."""
    return None if transform is None else ImageMaskTransform(transform)


def collate_skipping(batch: list[Any]) -> Any:
    """Collate like the default, first dropping samples that were skipped (``None``).

    Args:
        batch: Samples from :class:`FolderImageDataset`; skipped ones are ``None``.

    Returns:
        ``(images (B', 3, H, W), targets (B',) or (B', K))`` with ``B' <= B``
        (plus ``masks (B', H, W)`` bool for sets with object masks), or ``None``
        if every sample of the batch was skipped.
    """
    from torch.utils.data import default_collate

    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    return default_collate(kept)

"""ImageNet-1k: canonical class order, class names and the train/val folder sets.

The class order is the sorted list of the 1000 ILSVRC-2012 WordNet ids
(``n01440764`` … ``n15075141``), which is what ``torchvision.datasets.ImageNet``
and ``ImageFolder`` over wnid folders produce. The class names are OpenAI's
curated CLIP names (with the duplicates "missile" and "sunglasses" kept, as in
the reference; Xiao et al., CVPR 2023, §0 item 10 of our reference notes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from cfmask.data.folder import (
    DataLayoutError,
    FolderImageDataset,
    SkipLog,
    list_class_folders,
)

__all__ = (
    "EXPECTED_COUNTS",
    "ImageNet",
    "check_wnid_folders",
    "imagenet_a_wnids",
    "imagenet_class_names",
    "imagenet_r_wnids",
    "imagenet_wnids",
    "wnid_to_index",
)

#: Published image counts, keyed by set (ImageNet by split).
EXPECTED_COUNTS: dict[str, int] = {
    "imagenet_train": 1_281_167,
    "imagenet": 50_000,
    "imagenet_v2": 10_000,
    "imagenet_r": 30_000,
    "imagenet_sketch": 50_889,
    "objectnet": 18_574,
    "objectnet_all": 50_273,
    "imagenet_a": 7_500,
}

IMAGENET_LAYOUT = (
    "<imagenet>/train/<wnid>/*.JPEG and <imagenet>/val/<wnid>/*.JPEG (val also accepted "
    "as val_in_folder/), with the 1000 ILSVRC-2012 wnid folders n01440764 … n15075141. "
    "A flat val/ folder of 50,000 files must first be sorted into wnid folders."
)


def _load_json_list(name: str) -> tuple[str, ...]:
    text = resources.files("cfmask.data").joinpath("metadata", name).read_text("utf-8")
    data = json.loads(text)
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise RuntimeError(f"corrupt package metadata file {name}")
    return tuple(data)


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """Return the 1000 ImageNet-1k wnids in class-index order (sorted).

    Example:
        >>> w = imagenet_wnids()
        >>> len(w), w[0], w[-1]
        (1000, 'n01440764', 'n15075141')
    """
    return _load_json_list("imagenet_wnids.json")


@cache
def wnid_to_index() -> dict[str, int]:
    """Return the map from wnid to ImageNet class index (0-999)."""
    return {w: i for i, w in enumerate(imagenet_wnids())}


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """Return OpenAI's 1000 curated ImageNet class names, in class-index order.

    The list is open_clip's own (``open_clip.IMAGENET_CLASSNAMES``), the one
    :class:`~cfmask.backbones.OpenCLIPViT` uses by default, so the datamodule's
    names and the default zero-shot head always agree.

    Example:
        >>> names = imagenet_class_names()
        >>> names[0], names.count("missile")
        ('tench', 2)
    """
    import open_clip

    return tuple(open_clip.IMAGENET_CLASSNAMES)


@cache
def imagenet_r_wnids() -> tuple[str, ...]:
    """Return the 200 wnids of ImageNet-R, sorted (its released folder names)."""
    return _load_json_list("imagenet_r_wnids.json")


@cache
def imagenet_a_wnids() -> tuple[str, ...]:
    """Return the 200 wnids of ImageNet-A, sorted (its released folder names)."""
    return _load_json_list("imagenet_a_wnids.json")


def _preview(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(items[:k])
    return shown + (f", … ({len(items)} in all)" if len(items) > k else "")


def check_wnid_folders(name: str, root: Path, expected: Sequence[str], layout: str) -> list[str]:
    """Check that ``root`` holds exactly the wnid class folders ``expected``.

    Args:
        name: Set name for messages.
        root: Directory holding the class folders.
        expected: The wnid folders the set must have.
        layout: Expected-layout description for messages.

    Returns:
        The folder names found (sorted), equal to ``sorted(expected)``.

    Raises:
        DataLayoutError: If ``root`` is missing, a folder is not an ImageNet
            wnid, or the set of folders differs from ``expected``.
    """
    if not root.is_dir():
        raise DataLayoutError(f"{name}: directory not found: {root}. Expected layout: {layout}")
    found = list_class_folders(root)
    known = wnid_to_index()
    unknown = [f for f in found if f not in known]
    if unknown:
        raise DataLayoutError(
            f"{name}: {len(unknown)} class folder(s) under {root} are not ImageNet-1k wnids: "
            f"{_preview(unknown)}. Expected layout: {layout}"
        )
    want = set(expected)
    if set(found) != want:
        missing = sorted(want - set(found))
        extra = sorted(set(found) - want)
        parts = [f"found {len(found)} class folders under {root}, expected {len(want)}"]
        if missing:
            parts.append(f"missing: {_preview(missing)}")
        if extra:
            parts.append(f"not part of this set: {_preview(extra)}")
        raise DataLayoutError(f"{name}: wrong classes; " + "; ".join(parts) + f". Layout: {layout}")
    return found


def _find_split_dir(root: Path, split: str) -> Path:
    names = ("train",) if split == "train" else ("val", "val_in_folder")
    for n in names:
        if (root / n).is_dir():
            return root / n
    tried = ", ".join(str(root / n) for n in names)
    raise DataLayoutError(
        f"imagenet ({split}): no {split} folder found; tried {tried}. "
        f"Expected layout: {IMAGENET_LAYOUT}"
    )


class ImageNet(FolderImageDataset):
    """ImageNet-1k train or val from wnid class folders; targets are class indices 0-999.

    Args:
        root: The ImageNet directory holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        transform: Applied to each RGB image.
        skip_corrupt: See :class:`~cfmask.data.folder.FolderImageDataset`.
        skip_log: See :class:`~cfmask.data.folder.FolderImageDataset`.

    Raises:
        DataLayoutError: Missing directory, unknown wnid or wrong class count.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "val"] = "val",
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        skip_log: SkipLog | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split = split
        d = _find_split_dir(Path(root), split)
        name = "imagenet" if split == "val" else "imagenet_train"
        wnids = imagenet_wnids()
        check_wnid_folders(name, d, wnids, IMAGENET_LAYOUT)
        super().__init__(
            name,
            d,
            folders=wnids,
            targets=list(range(len(wnids))),
            transform=transform,
            expected_count=EXPECTED_COUNTS[name],
            skip_corrupt=skip_corrupt,
            skip_log=skip_log,
            layout=IMAGENET_LAYOUT,
        )

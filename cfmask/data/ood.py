"""The five distribution-shift test sets, each with the reference's class protocol.

Every set yields targets in ImageNet-1k class-index space (0-999), so the one
1000-way zero-shot head is used for all of them (reference notes §4.3, §5):

============== ======================= ============================= ===========
Set            Folders                 Target                        Evaluated
============== ======================= ============================= ===========
ImageNet-V2    ``0`` … ``999``         ``int(folder)`` (not the       all 1000
                                       lexicographic folder order)
ImageNet-R     200 wnids               ImageNet index of the wnid     200 classes
ImageNet-Sketch 1000 wnids             ImageNet index of the wnid     all 1000
ObjectNet      313 folder names        multi-hot over the ImageNet    125 classes
                                       classes mapped to the folder
ImageNet-A     200 wnids               ImageNet index of the wnid     200 classes
============== ======================= ============================= ===========
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from cfmask.data.folder import (
    DataLayoutError,
    DataLayoutWarning,
    FolderImageDataset,
    SkipLog,
    list_class_folders,
    list_images,
)
from cfmask.data.imagenet import (
    EXPECTED_COUNTS,
    check_wnid_folders,
    imagenet_a_wnids,
    imagenet_r_wnids,
    imagenet_wnids,
    wnid_to_index,
)

__all__ = (
    "OBJECTNET_MAPPING_FILES",
    "ImageNetA",
    "ImageNetR",
    "ImageNetSketch",
    "ImageNetV2",
    "ObjectNet",
    "ObjectNetMapping",
    "crop_border",
    "load_objectnet_mapping",
)

_Transform = Callable[[Image.Image], Any] | None

V2_LAYOUT = (
    "<imagenet_v2>/0/ … <imagenet_v2>/999/ (the matched-frequency tarball extracts as "
    "imagenetv2-matched-frequency-format-val/), 10 images per folder; the folder name "
    "is the ImageNet class index."
)
R_LAYOUT = "<imagenet-r>/<wnid>/*.jpg with the 200 ImageNet-R wnid folders."
A_LAYOUT = "<imagenet-a>/<wnid>/*.jpg with the 200 ImageNet-A wnid folders."
SKETCH_LAYOUT = (
    "<imagenet-sketch>/<wnid>/*.JPEG with the 1000 ImageNet wnid folders directly under "
    "it (the archive extracts as sketch/)."
)
OBJECTNET_LAYOUT = (
    "<objectnet-1.0>/images/<313 class folders>/*.png and <objectnet-1.0>/mappings/ with "
    "folder_to_objectnet_label.json, objectnet_to_imagenet_1k.json, "
    "pytorch_to_imagenet_2012_id.json and imagenet_to_label_2012_v2 (all shipped in the "
    "ObjectNet 1.0 zip)."
)

#: Mapping files read from ObjectNet's own ``mappings/`` folder.
OBJECTNET_MAPPING_FILES: tuple[str, ...] = (
    "folder_to_objectnet_label.json",
    "objectnet_to_imagenet_1k.json",
    "pytorch_to_imagenet_2012_id.json",
    "imagenet_to_label_2012_v2",
)


class ImageNetV2(FolderImageDataset):
    """ImageNet-V2 (matched-frequency), numeric folders remapped to ImageNet indices.

    ``ImageFolder`` would number the folders lexicographically (``0, 1, 10,
    100, …``), scrambling the labels; here the target is ``int(folder)``.

    Args:
        root: Directory holding the folders ``0`` … ``999``.
        transform: Applied to each RGB image.
        skip_corrupt: See :class:`~cfmask.data.folder.FolderImageDataset`.
        skip_log: See :class:`~cfmask.data.folder.FolderImageDataset`.

    Raises:
        DataLayoutError: Missing directory, non-numeric folder, folder out of
            range 0-999, or not exactly 1000 folders.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: _Transform = None,
        skip_corrupt: bool = False,
        skip_log: SkipLog | None = None,
    ) -> None:
        name = "imagenet_v2"
        d = Path(root)
        if not d.is_dir():
            raise DataLayoutError(f"{name}: directory not found: {d}. Expected layout: {V2_LAYOUT}")
        found = list_class_folders(d)
        bad = [f for f in found if not f.isdigit()]
        if bad:
            raise DataLayoutError(
                f"{name}: class folders under {d} must be numeric ImageNet indices, found "
                f"{', '.join(bad[:5])}. Expected layout: {V2_LAYOUT}"
            )
        out_of_range = [f for f in found if not 0 <= int(f) <= 999 or str(int(f)) != f]
        if out_of_range:
            raise DataLayoutError(
                f"{name}: numeric class folders out of range 0-999 under {d}: "
                f"{', '.join(out_of_range[:5])}. Expected layout: {V2_LAYOUT}"
            )
        if len(found) != 1000:
            raise DataLayoutError(
                f"{name}: wrong class count: found {len(found)} class folders under {d}, "
                f"expected 1000. Expected layout: {V2_LAYOUT}"
            )
        super().__init__(
            name,
            d,
            folders=found,
            targets=[int(f) for f in found],
            transform=transform,
            expected_count=EXPECTED_COUNTS[name],
            skip_corrupt=skip_corrupt,
            skip_log=skip_log,
            layout=V2_LAYOUT,
        )


class _WnidSubset(FolderImageDataset):
    """A set whose folders are (a subset of) ImageNet wnids.

    Subclasses name the set, its wnids and its expected layout; the constructor is
    shared.

    Args:
        root: Directory holding the set's wnid folders.
        transform: Applied to each RGB image.
        skip_corrupt: See :class:`~cfmask.data.folder.FolderImageDataset`.
        skip_log: See :class:`~cfmask.data.folder.FolderImageDataset`.
    """

    #: Key of the set in :data:`~cfmask.data.imagenet.EXPECTED_COUNTS` and in reports.
    set_name: ClassVar[str]
    #: Layout description shown in errors about the folder tree.
    layout_help: ClassVar[str]

    #: Returns the wnid folders of the set, in ImageNet index order.
    set_wnids: Callable[[], tuple[str, ...]]

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: _Transform = None,
        skip_corrupt: bool = False,
        skip_log: SkipLog | None = None,
    ) -> None:
        d = Path(root)
        wnids = self.set_wnids()
        check_wnid_folders(self.set_name, d, wnids, self.layout_help)
        index = wnid_to_index()
        targets = [index[w] for w in wnids]
        subset = None if len(wnids) == 1000 else torch.tensor(sorted(targets), dtype=torch.long)
        super().__init__(
            self.set_name,
            d,
            folders=wnids,
            targets=targets,
            transform=transform,
            expected_count=EXPECTED_COUNTS[self.set_name],
            skip_corrupt=skip_corrupt,
            skip_log=skip_log,
            class_subset=subset,
            layout=self.layout_help,
        )


class ImageNetR(_WnidSubset):
    """ImageNet-R (renditions): 200 wnid folders, evaluated over those 200 classes.

    Args:
        root: Directory holding the 200 wnid folders.
        transform: Applied to each RGB image.
        skip_corrupt: See :class:`~cfmask.data.folder.FolderImageDataset`.
        skip_log: See :class:`~cfmask.data.folder.FolderImageDataset`.
    """

    set_name = "imagenet_r"
    layout_help = R_LAYOUT
    set_wnids = staticmethod(imagenet_r_wnids)


class ImageNetA(_WnidSubset):
    """ImageNet-A (natural adversarial): 200 wnid folders, evaluated over those 200 classes.

    Args:
        root: Directory holding the 200 wnid folders.
        transform: Applied to each RGB image.
        skip_corrupt: See :class:`~cfmask.data.folder.FolderImageDataset`.
        skip_log: See :class:`~cfmask.data.folder.FolderImageDataset`.
    """

    set_name = "imagenet_a"
    layout_help = A_LAYOUT
    set_wnids = staticmethod(imagenet_a_wnids)


class ImageNetSketch(_WnidSubset):
    """ImageNet-Sketch: 1000 wnid folders, all classes evaluated.

    Args:
        root: Directory holding the 1000 wnid folders (often named ``sketch/``).
        transform: Applied to each RGB image.
        skip_corrupt: See :class:`~cfmask.data.folder.FolderImageDataset`.
        skip_log: See :class:`~cfmask.data.folder.FolderImageDataset`.
    """

    set_name = "imagenet_sketch"
    layout_help = SKETCH_LAYOUT
    set_wnids = staticmethod(imagenet_wnids)


def crop_border(image: Image.Image, pixels: int = 2) -> Image.Image:
    """Cut ``pixels`` from every side of ``image`` (ObjectNet's red 1-px border + smear).

    Args:
        image: ``W x H`` image.
        pixels: Width removed from each side.

    Returns:
        The ``(W - 2p) x (H - 2p)`` centre of the image.

    Example:
        >>> crop_border(Image.new("RGB", (10, 8))).size
        (6, 4)
    """
    w, h = image.size
    if w <= 2 * pixels or h <= 2 * pixels:
        raise ValueError(f"image of size {w}x{h} is too small to crop a {pixels}-px border")
    return image.crop((pixels, pixels, w - pixels, h - pixels))


class ObjectNetMapping:
    """The ObjectNet → ImageNet class map, built from ObjectNet's mapping files.

    Attributes:
        folder_to_label: All ObjectNet folders and their label names.
        folder_to_imagenet: For each *mapped* folder (sorted by folder name), the
            sorted ImageNet class indices that count as a correct prediction.
    """

    def __init__(
        self, folder_to_label: dict[str, str], folder_to_imagenet: dict[str, list[int]]
    ) -> None:
        self.folder_to_label = folder_to_label
        self.folder_to_imagenet = dict(sorted(folder_to_imagenet.items()))

    @property
    def class_subset(self) -> Tensor:
        """Sorted ``(K,)`` ImageNet indices reachable from any mapped folder (125 for 1.0)."""
        ids = sorted({i for v in self.folder_to_imagenet.values() for i in v})
        return torch.tensor(ids, dtype=torch.long)

    @property
    def disjoint(self) -> bool:
        """Whether no ImageNet class is mapped from two ObjectNet classes."""
        flat = [i for v in self.folder_to_imagenet.values() for i in v]
        return len(flat) == len(set(flat))

    def multi_hot(self, folder: str, num_classes: int = 1000) -> Tensor:
        """``(num_classes,)`` bool target: ``True`` at the ImageNet classes of ``folder``."""
        t = torch.zeros(num_classes, dtype=torch.bool)
        t[self.folder_to_imagenet[folder]] = True
        return t


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataLayoutError(f"objectnet: mapping file {path} is not valid JSON: {err}") from err


def load_objectnet_mapping(mappings_dir: str | os.PathLike[str]) -> ObjectNetMapping:
    """Read ObjectNet's four mapping files and build the folder → ImageNet index map.

    Steps (reference notes §5.3): folder → ObjectNet label
    (``folder_to_objectnet_label.json``); label → ``"; "``-separated ImageNet
    names (``objectnet_to_imagenet_1k.json``, 113 labels); name → ILSVRC-2012 id
    (line number in ``imagenet_to_label_2012_v2``); ILSVRC id → PyTorch class
    index (inverse of ``pytorch_to_imagenet_2012_id.json``, which is *not* the
    identity).

    Args:
        mappings_dir: ObjectNet's ``mappings/`` folder.

    Returns:
        The mapping.

    Raises:
        DataLayoutError: If a file is missing or malformed, or a name does not resolve.
    """
    d = Path(mappings_dir)
    missing = [f for f in OBJECTNET_MAPPING_FILES if not (d / f).is_file()]
    if missing:
        raise DataLayoutError(
            f"objectnet: mapping file(s) not found in {d}: {', '.join(missing)}. They ship "
            f"inside the ObjectNet 1.0 zip; nothing is downloaded. Expected layout: "
            f"{OBJECTNET_LAYOUT}"
        )
    folder_to_label = _read_json(d / OBJECTNET_MAPPING_FILES[0])
    label_to_names = _read_json(d / OBJECTNET_MAPPING_FILES[1])
    torch_to_ilsvrc_raw = _read_json(d / OBJECTNET_MAPPING_FILES[2])
    ilsvrc_names = (d / OBJECTNET_MAPPING_FILES[3]).read_text(encoding="utf-8").splitlines()
    ilsvrc_names = [n.strip() for n in ilsvrc_names if n.strip()]
    for obj, fname in ((folder_to_label, 0), (label_to_names, 1), (torch_to_ilsvrc_raw, 2)):
        if not isinstance(obj, dict):
            raise DataLayoutError(
                f"objectnet: {d / OBJECTNET_MAPPING_FILES[fname]} must hold a JSON object"
            )
    if len(ilsvrc_names) != 1000:
        raise DataLayoutError(
            f"objectnet: {d / OBJECTNET_MAPPING_FILES[3]} must list 1000 ImageNet names, one "
            f"per line; found {len(ilsvrc_names)}"
        )
    torch_to_ilsvrc = {int(k): int(v) for k, v in torch_to_ilsvrc_raw.items()}
    if sorted(torch_to_ilsvrc) != list(range(1000)) or sorted(torch_to_ilsvrc.values()) != list(
        range(1000)
    ):
        raise DataLayoutError(
            f"objectnet: {d / OBJECTNET_MAPPING_FILES[2]} must be a one-to-one map of the "
            f"class indices 0-999 onto the ILSVRC-2012 ids 0-999"
        )
    ilsvrc_to_torch = {v: k for k, v in torch_to_ilsvrc.items()}
    name_to_ids: dict[str, list[int]] = {}
    for i, n in enumerate(ilsvrc_names):
        name_to_ids.setdefault(n, []).append(i)
    label_to_folder = {str(v): str(k) for k, v in folder_to_label.items()}
    folder_to_imagenet: dict[str, list[int]] = {}
    for label, names in label_to_names.items():
        if label not in label_to_folder:
            raise DataLayoutError(
                f"objectnet: label {label!r} of {OBJECTNET_MAPPING_FILES[1]} has no folder in "
                f"{OBJECTNET_MAPPING_FILES[0]}"
            )
        ids: list[int] = []
        for n in str(names).split("; "):
            hits = name_to_ids.get(n.strip())
            if not hits:
                raise DataLayoutError(
                    f"objectnet: ImageNet name {n!r} (for {label!r}) is not a line of "
                    f"{d / OBJECTNET_MAPPING_FILES[3]}"
                )
            if len(hits) > 1:
                raise DataLayoutError(
                    f"objectnet: ImageNet name {n!r} (for {label!r}) is ambiguous in "
                    f"{OBJECTNET_MAPPING_FILES[3]} (lines {hits})"
                )
            ids.append(ilsvrc_to_torch[hits[0]])
        folder_to_imagenet[label_to_folder[label]] = sorted(set(ids))
    return ObjectNetMapping(
        {str(k): str(v) for k, v in folder_to_label.items()}, folder_to_imagenet
    )


class ObjectNet(FolderImageDataset):
    """ObjectNet 1.0 restricted to the 113 classes that map to ImageNet.

    Images are decoded, then 2 px are cut from every side (the red border)
    before ``transform``. The target is a multi-hot ``(1000,)`` bool tensor over
    the ImageNet classes mapped to the image's ObjectNet class; evaluation
    restricts logits to the union of mapped classes (125) and counts a
    prediction correct when the target is set at the predicted class.

    Args:
        root: The ``objectnet-1.0`` directory (holding ``images/`` and ``mappings/``).
        transform: Applied to each border-cropped RGB image.
        skip_corrupt: See :class:`~cfmask.data.folder.FolderImageDataset`.
        skip_log: See :class:`~cfmask.data.folder.FolderImageDataset`.
        mappings_dir: Read the mapping files from here instead of ``root/mappings``.
        border: Pixels cut from each side.

    Raises:
        DataLayoutError: Missing ``images/`` or mapping files, unknown or missing
            class folders.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: _Transform = None,
        skip_corrupt: bool = False,
        skip_log: SkipLog | None = None,
        mappings_dir: str | os.PathLike[str] | None = None,
        border: int = 2,
    ) -> None:
        name = "objectnet"
        base = Path(root)
        images = base / "images"
        if not images.is_dir():
            raise DataLayoutError(
                f"objectnet: directory not found: {images}. Expected layout: {OBJECTNET_LAYOUT}"
            )
        self.mapping = load_objectnet_mapping(mappings_dir or base / "mappings")
        self.border = border
        found = list_class_folders(images)
        unknown = [f for f in found if f not in self.mapping.folder_to_label]
        if unknown:
            raise DataLayoutError(
                f"objectnet: folder(s) under {images} are not in "
                f"{OBJECTNET_MAPPING_FILES[0]}: {', '.join(unknown[:5])}. Expected layout: "
                f"{OBJECTNET_LAYOUT}"
            )
        folders = list(self.mapping.folder_to_imagenet)
        absent = [f for f in folders if f not in found]
        if absent:
            raise DataLayoutError(
                f"objectnet: {len(absent)} mapped class folder(s) missing under {images}: "
                f"{', '.join(absent[:5])}. Expected layout: {OBJECTNET_LAYOUT}"
            )
        n_cls, n_in = len(folders), len(self.mapping.class_subset)
        if (n_cls, n_in) != (113, 125) or not self.mapping.disjoint:
            warnings.warn(
                f"objectnet: the mapping files give {n_cls} ObjectNet classes over {n_in} "
                f"ImageNet classes (disjoint: {self.mapping.disjoint}); ObjectNet 1.0 gives "
                f"113 over 125, disjoint. Results will not match published numbers.",
                DataLayoutWarning,
                stacklevel=2,
            )
        if len(found) != 313:
            warnings.warn(
                f"objectnet: found {len(found)} class folders under {images}, expected 313",
                DataLayoutWarning,
                stacklevel=2,
            )
        #: Images in all class folders, mapped or not (50,273 in ObjectNet 1.0).
        self.num_images_all = sum(len(list_images(images / f)) for f in found)
        super().__init__(
            name,
            images,
            folders=folders,
            targets=[self.mapping.multi_hot(f) for f in folders],
            transform=transform,
            expected_count=EXPECTED_COUNTS[name],
            skip_corrupt=skip_corrupt,
            skip_log=skip_log,
            class_subset=self.mapping.class_subset,
            multi_label=True,
            layout=OBJECTNET_LAYOUT,
        )

    def load(self, index: int) -> Image.Image:
        """Decode sample ``index`` and cut the border (before ``transform``)."""
        return crop_border(super().load(index), self.border)

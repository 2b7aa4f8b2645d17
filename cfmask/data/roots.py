"""Where the standard sets live: the OOD set keys, their folder aliases, the lookup.

A set is found under a common data root by the folder names people usually
give it (:data:`FOLDER_ALIASES`), or at its own explicit root;
:func:`resolve_set_root` names every path it tried when nothing is there.
Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from cfmask.data.folder import DataLayoutError

__all__ = ("FOLDER_ALIASES", "OOD_SETS", "OODSet", "resolve_set_root", "user_path")

OODSet = Literal["imagenet_v2", "imagenet_r", "imagenet_sketch", "objectnet", "imagenet_a"]

#: The five OOD sets, in the reference's evaluation order.
OOD_SETS: tuple[OODSet, ...] = (
    "imagenet_v2",
    "imagenet_r",
    "imagenet_sketch",
    "objectnet",
    "imagenet_a",
)

#: Folder names searched under ``root`` for each set, first match wins.
FOLDER_ALIASES: dict[str, tuple[str, ...]] = {
    "imagenet": ("imagenet", "ILSVRC2012", "ImageNet", "imagenet-1k", "ILSVRC/Data/CLS-LOC"),
    "imagenet_v2": (
        "imagenetv2-matched-frequency-format-val",
        "imagenetv2-matched-frequency",
        "ImageNetV2-matched-frequency",
        "imagenet-v2",
        "imagenetv2",
        "imagenet_v2",
    ),
    "imagenet_r": ("imagenet-r", "imagenet_r", "ImageNet-R"),
    "imagenet_sketch": (
        "imagenet-sketch/sketch",
        "imagenet-sketch",
        "imagenet_sketch",
        "ImageNet-Sketch",
        "sketch",
    ),
    "objectnet": ("objectnet-1.0", "objectnet", "ObjectNet"),
    "imagenet_a": ("imagenet-a", "imagenet_a", "ImageNet-A"),
}


def user_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` with ``~`` and environment variables expanded, as a shell would.

    Configs and notebooks write data roots as ``~/data`` or ``$DATA/imagenet``;
    Python's file functions take such strings literally.

    Args:
        path: A path as the user wrote it.

    Returns:
        The expanded path.

    Example:
        >>> user_path("~/data") == Path.home() / "data"
        True
    """
    return Path(os.path.expandvars(os.fspath(path))).expanduser()


def resolve_set_root(
    name: str, root: str | os.PathLike[str] | None, explicit: str | os.PathLike[str] | None
) -> Path:
    """Find a set's directory: the explicit path, else the first alias under ``root``.

    Args:
        name: Set key (``"imagenet"`` or one of :data:`OOD_SETS`).
        root: Common data root, or ``None``.
        explicit: The set's own root, which wins if given.

    Returns:
        The directory.

    Raises:
        DataLayoutError: Nothing found; the message lists every path tried.
    """
    if explicit is not None:
        p = user_path(explicit)
        if name == "objectnet" and p.name == "images" and (p.parent / "mappings").is_dir():
            p = p.parent
        if not p.is_dir():
            raise DataLayoutError(f"{name}: directory not found: {p} (given explicitly)")
        return p
    if root is None:
        raise DataLayoutError(f"{name}: no root given; pass root= or {name}_root=")
    tried = [user_path(root) / a for a in FOLDER_ALIASES[name]]
    for p in tried:
        if p.is_dir():
            return p
    raise DataLayoutError(
        f"{name}: not found under {root}; tried "
        + ", ".join(str(t) for t in tried)
        + ". Nothing is downloaded: place the set there (see docs/data.md) or pass "
        f"{name}_root=."
    )

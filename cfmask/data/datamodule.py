"""The datamodules and their helpers under their earlier import path.

Each lives in a module of its own: :mod:`cfmask.data.imagenet_module`
(ImageNet + the five OOD sets), :mod:`cfmask.data.folder_module` (a user's
class folders), :mod:`cfmask.data.splits` (held-out splits),
:mod:`cfmask.data.roots` (where the standard sets live) and
:mod:`cfmask.data.loading` (loader settings). Importing them from here keeps
working.
"""

from __future__ import annotations

from cfmask.data.folder_module import ImageFolderDataModule
from cfmask.data.imagenet_module import ImageNetOODDataModule
from cfmask.data.loading import LoaderConfig
from cfmask.data.roots import FOLDER_ALIASES, OOD_SETS, OODSet, resolve_set_root
from cfmask.data.splits import stratified_split

__all__ = (
    "FOLDER_ALIASES",
    "OOD_SETS",
    "ImageFolderDataModule",
    "ImageNetOODDataModule",
    "LoaderConfig",
    "OODSet",
    "resolve_set_root",
    "stratified_split",
)

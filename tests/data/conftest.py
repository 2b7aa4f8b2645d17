"""Fixtures generating fake data trees in every supported layout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # makes the _fake_trees helpers importable

from _fake_trees import make_folder_set, make_objectnet

from cfmask.data.imagenet import (
    imagenet_a_wnids,
    imagenet_r_wnids,
    imagenet_wnids,
)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with every set under a usual folder name (sketch under its alias)."""
    root = tmp_path_factory.mktemp("data")
    wnids = imagenet_wnids()
    make_folder_set(root / "imagenet" / "train", wnids, per_class=2)
    make_folder_set(root / "imagenet" / "val", wnids)
    make_folder_set(root / "imagenetv2-matched-frequency-format-val", range(1000), ext=".jpeg")
    make_folder_set(root / "imagenet-r", imagenet_r_wnids(), ext=".jpg")
    make_folder_set(root / "imagenet-a", imagenet_a_wnids(), ext=".jpg")
    make_folder_set(root / "sketch", wnids)
    make_objectnet(root)
    return root


@pytest.fixture()
def custom_root(tmp_path: Path) -> Path:
    """A user dataset: train/ with 3 classes x 6 images, test/, and two OOD folders."""
    classes = ["cat", "dog", "red_fox"]
    make_folder_set(tmp_path / "mine" / "train", classes, per_class=6, ext=".png")
    make_folder_set(tmp_path / "mine" / "test", classes, per_class=2, ext=".png")
    make_folder_set(tmp_path / "ood_full", classes, per_class=1)
    make_folder_set(tmp_path / "ood_sub", ["red_fox", "cat"], per_class=2)
    return tmp_path

"""Data roots written as ``~/...`` or ``$VAR/...`` (as in the recipes) are expanded."""

from pathlib import Path

import pytest
from PIL import Image

from cfmask.data import ImageFolderDataModule
from cfmask.data.roots import resolve_set_root, user_path


def _tree(root: Path) -> None:
    for c in ("cat", "dog"):
        for j in range(3):
            path = root / "train" / c / f"{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * j, 0, 0)).save(path)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CFMASK_TEST_DATA", str(tmp_path / "data"))
    return tmp_path


def test_user_path_expands_home_and_variables(home):
    assert user_path("~/data/x") == home / "data" / "x"
    assert user_path("$CFMASK_TEST_DATA/x") == home / "data" / "x"
    assert user_path(Path("/abs/x")) == Path("/abs/x")


def test_set_roots_under_a_home_relative_root_are_found(home):
    (home / "data" / "imagenet-r").mkdir(parents=True)
    assert resolve_set_root("imagenet_r", "~/data", None) == home / "data" / "imagenet-r"
    assert resolve_set_root("imagenet_r", None, "~/data/imagenet-r") == home / "data" / "imagenet-r"


def test_image_folder_module_reads_a_home_relative_root_and_cache(home):
    _tree(home / "data" / "mine")
    (home / "data" / "shifted" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(home / "data" / "shifted" / "cat" / "0.png")
    dm = ImageFolderDataModule(
        root="~/data/mine",
        ood_roots={"shifted": "$CFMASK_TEST_DATA/shifted"},
        cache_dir="~/cache",
        image_size=8,
        batch_size=2,
        num_workers=0,
        val_size=2,
        test_size=2,
    )
    dm.setup("test")
    assert sorted(dm.test_sets) == ["id", "shifted"]
    assert len(dm.test_sets["shifted"]) == 1
    assert any((home / "cache").iterdir())  # the crop cache went under the real home
    assert not Path("~").exists()

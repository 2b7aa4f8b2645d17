"""The crop cache never hides an undecodable image, whatever the cache was built with."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _fake_trees import make_folder_set, write_image

from cfmask.data import ImageFolderDataModule
from cfmask.data.folder import CorruptImageError


def _tree(root: Path) -> Path:
    make_folder_set(root / "mine" / "train", ["cat", "dog"], per_class=4, ext=".png")
    make_folder_set(root / "mine" / "test", ["cat", "dog"], per_class=2, ext=".png")
    bad = root / "mine" / "test" / "dog" / "broken.png"
    bad.write_bytes(b"not an image")
    return bad


def _datamodule(root: Path, skip_corrupt: bool, cache: bool = True) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(
        root=str(root / "mine"),
        num_workers=0,
        image_size=8,
        eval_batch_size=64,
        skip_corrupt=skip_corrupt,
        cache_dir=str(root / "cache") if cache else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("test")
    return dm


def _test_batch(dm: ImageFolderDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    (loader,) = dm.test_dataloader()
    (batch,) = list(loader)
    return batch[0], batch[1]


def test_cache_built_while_skipping_still_raises_without_skip_corrupt(tmp_path: Path) -> None:
    bad = _tree(tmp_path)
    x, _ = _test_batch(_datamodule(tmp_path, skip_corrupt=True))
    assert x.shape[0] == 4  # 5 files, the broken one skipped
    strict = _datamodule(tmp_path, skip_corrupt=False)
    with pytest.raises(CorruptImageError, match=r"broken\.png"):
        _test_batch(strict)
    # Uncached, the same set raises the same error.
    with pytest.raises(CorruptImageError, match=r"broken\.png"):
        _test_batch(_datamodule(tmp_path, skip_corrupt=False, cache=False))
    assert bad.exists()


def test_cache_reused_while_skipping_reports_the_skip_like_an_uncached_run(tmp_path: Path) -> None:
    bad = _tree(tmp_path)
    _test_batch(_datamodule(tmp_path, skip_corrupt=True))  # builds the cache
    cached = _datamodule(tmp_path, skip_corrupt=True)
    uncached = _datamodule(tmp_path, skip_corrupt=True, cache=False)
    xc, yc = _test_batch(cached)
    xu, yu = _test_batch(uncached)
    assert torch.equal(xc, xu) and torch.equal(yc, yu)
    assert cached.skipped_images() == uncached.skipped_images() == {"id": [str(bad)]}


def test_replaced_file_invalidates_the_cached_verdict(tmp_path: Path) -> None:
    bad = _tree(tmp_path)
    _test_batch(_datamodule(tmp_path, skip_corrupt=True))  # builds the cache
    write_image(bad, color=(10, 200, 30))  # the user replaces the broken file
    xc, yc = _test_batch(_datamodule(tmp_path, skip_corrupt=False))
    xu, yu = _test_batch(_datamodule(tmp_path, skip_corrupt=False, cache=False))
    assert xc.shape[0] == 5
    assert torch.equal(xc, xu) and torch.equal(yc, yu)

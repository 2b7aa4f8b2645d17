"""Datamodules: split, loader policy, test-loader order, aliases, cache, custom folders."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _fake_trees import TEST_SETS, make_folder_set

from cfmask.data import (
    DataLayoutError,
    ImageFolderDataModule,
    ImageNetOODDataModule,
    TruncatedDatasetWarning,
    imagenet_class_names,
    stratified_split,
)
from cfmask.data.imagenet import imagenet_r_wnids, imagenet_wnids

pytestmark = pytest.mark.filterwarnings("ignore::cfmask.data.DataLayoutWarning")


def test_stratified_split_sizes_and_proportions() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    tr, va = stratified_split(labels, 10, seed=0)
    assert len(va) == 10 and len(tr) == 90
    assert torch.bincount(labels[va]).tolist() == [5, 3, 2]
    assert sorted(tr.tolist() + va.tolist()) == list(range(100))
    _tr2, va2 = stratified_split(labels, 10, seed=0)
    assert torch.equal(va, va2)
    _, va3 = stratified_split(labels, 10, seed=1)
    assert not torch.equal(va, va3)
    # remainder goes to the largest fractional parts: quotas 3.5, 2.1, 1.4 -> 4, 2, 1
    _, va4 = stratified_split(labels, 7, seed=3)
    assert torch.bincount(labels[va4]).tolist() == [4, 2, 1]
    _, va5 = stratified_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[va5]).tolist() == [10, 6, 4]
    with pytest.raises(ValueError):
        stratified_split(labels, 100)


def test_imagenet_ood_module(data_root: Path) -> None:
    dm = ImageNetOODDataModule(
        root=str(data_root),
        batch_size=16,
        eval_batch_size=64,
        num_workers=0,
        image_size=8,
        val_size=1000,
        split_seed=0,
    )
    assert dm.num_classes == 1000 and dm.class_names == list(imagenet_class_names())
    with pytest.warns(TruncatedDatasetWarning):
        dm.setup("fit")
    assert len(dm.train_set) == 1000 and len(dm.val_set) == 1000
    # stratified: every class keeps exactly one train and one held-out image
    assert torch.bincount(dm.val_set.class_indices, minlength=1000).eq(1).all()
    tl = dm.train_dataloader()
    assert tl.drop_last and not tl.pin_memory and len(tl) == 1000 // 16
    x, _y = next(iter(tl))
    assert x.shape == (16, 3, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("test")
    assert dm.test_set_names == list(TEST_SETS)
    sets = dm.eval_sets
    assert [s.name for s in sets] == dm.test_set_names and sets[0].is_id
    assert sets[2].class_subset is not None and len(sets[2].class_subset) == 200
    assert sets[4].multi_label and sets[1].class_subset is None
    assert all(s.truncated for s in sets)
    loaders = dm.test_dataloader()
    assert len(loaders) == 6
    xo, yo = next(iter(loaders[4]))
    assert xo.shape == (8, 3, 8, 8) and yo.shape == (8, 1000) and yo.dtype == torch.bool


def test_ood_subset_and_explicit_roots(data_root: Path) -> None:
    dm = ImageNetOODDataModule(
        imagenet_root=str(data_root / "imagenet"),
        imagenet_sketch_root=str(data_root / "sketch"),
        objectnet_root=str(data_root / "objectnet-1.0" / "images"),
        ood_sets=["objectnet", "imagenet_sketch"],
        num_workers=0,
        image_size=8,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("test")
    assert dm.test_set_names == ["imagenet", "objectnet", "imagenet_sketch"]
    with pytest.raises(ValueError, match="ood_sets"):
        ImageNetOODDataModule(root=str(data_root), ood_sets=["imagenet_c"])  # type: ignore[list-item]


def test_missing_set_error_lists_paths_tried(tmp_path: Path) -> None:
    dm = ImageNetOODDataModule(root=str(tmp_path), ood_sets=["imagenet_r"], num_workers=0)
    with pytest.raises(DataLayoutError) as e:
        dm.setup("test")
    msg = str(e.value)
    assert "imagenet" in msg and str(tmp_path / "ILSVRC2012") in msg and "downloaded" in msg


def test_cache_gives_identical_tensors(data_root: Path, tmp_path: Path) -> None:
    kw = dict(
        root=str(data_root),
        ood_sets=["objectnet", "imagenet_r"],
        num_workers=0,
        image_size=8,
        eval_batch_size=1000,
        val_size=1000,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = ImageNetOODDataModule(**kw)
        plain.setup("test")
        cached = ImageNetOODDataModule(**kw, cache_dir=str(tmp_path / "cache"))
        cached.prepare_data()
        cached2 = ImageNetOODDataModule(**kw, cache_dir=str(tmp_path / "cache"))
        cached2.setup("test")
    assert len(list((tmp_path / "cache").iterdir())) == 4  # 3 test sets + held-out split
    for a, b in zip(plain.test_dataloader(), cached2.test_dataloader(), strict=True):
        (xa, ya), (xb, yb) = next(iter(a)), next(iter(b))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _imagenet_r_module(root: Path, r_ext: str = ".JPEG", **options: Any) -> ImageNetOODDataModule:
    """Fake ImageNet val and ImageNet-R trees under ``root``, and a module testing on them."""
    make_folder_set(root / "imagenet" / "val", imagenet_wnids())
    make_folder_set(root / "imagenet-r", imagenet_r_wnids(), ext=r_ext)
    return ImageNetOODDataModule(root=str(root), ood_sets=["imagenet_r"], num_workers=0, **options)


def test_corrupt_skip_in_loader(tmp_path: Path) -> None:
    dm = _imagenet_r_module(tmp_path, image_size=8, eval_batch_size=256, skip_corrupt=True)
    bad = tmp_path / "imagenet-r" / imagenet_r_wnids()[0] / "zz.jpg"
    bad.write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("test")
        x, _y = next(iter(dm.test_dataloader()[1]))
    assert x.shape[0] == 200  # 201 files, 1 skipped
    assert dm.skipped_images() == {"imagenet_r": [str(bad)]}


def test_image_folder_module(custom_root: Path) -> None:
    dm = ImageFolderDataModule(
        root=str(custom_root / "mine"),
        ood_roots={"full": str(custom_root / "ood_full"), "sub": str(custom_root / "ood_sub")},
        val_size=3,
        num_workers=0,
        image_size=8,
        batch_size=4,
    )
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "red fox"]
    dm.setup("fit")
    assert len(dm.val_set) == 3 and len(dm.train_set) == 15
    assert dm.test_set_names == ["id", "full", "sub"]
    sets = dm.eval_sets
    assert sets[1].class_subset is None
    assert sets[2].class_subset.tolist() == [0, 2]  # cat, red_fox
    _x, y = next(iter(dm.test_dataloader()[2]))
    assert sorted(y.tolist()) == [0, 0, 2, 2]
    named = ImageFolderDataModule(
        root=str(custom_root / "mine"),
        num_workers=0,
        class_names={"cat": "a cat", "dog": "a dog", "red_fox": "fox"},
    )
    assert named.class_names == ["a cat", "a dog", "fox"]


def test_image_folder_single_folder_split(custom_root: Path) -> None:
    dm = ImageFolderDataModule(
        root=str(custom_root / "mine" / "train"),
        val_size=3,
        test_size=6,
        num_workers=0,
        image_size=8,
    )
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_sets["id"])) == (9, 3, 6)
    seen = set()
    for ds in (dm.train_set, dm.val_set, dm.test_sets["id"]):
        paths = {s.path for s in ds.samples}
        assert not paths & seen
        seen |= paths


def test_image_folder_unknown_class(custom_root: Path) -> None:
    make_folder_set(custom_root / "ood_bad", ["cat", "wolf"])
    dm = ImageFolderDataModule(
        root=str(custom_root / "mine"),
        num_workers=0,
        ood_roots={"bad": str(custom_root / "ood_bad")},
    )
    with pytest.raises(DataLayoutError, match=r"bad: .*not classes of the ID set: wolf"):
        dm.setup()
    with pytest.raises(ValueError, match="class_names has 2 names"):
        ImageFolderDataModule(root=str(custom_root / "mine"), class_names=["a", "b"])


def test_test_only_run_with_cache_needs_no_train_folder(tmp_path: Path) -> None:
    from cfmask import CounterfactualFineTuner
    from cfmask.backbones import TimmViT
    from cfmask.testing import quiet_trainer, tiny_timm_args

    dm = _imagenet_r_module(
        tmp_path, ".jpg", image_size=32, eval_batch_size=500, cache_dir=str(tmp_path / "cache")
    )
    assert not (tmp_path / "imagenet" / "train").exists()
    backbone = TimmViT(**tiny_timm_args(1000, depth=1))
    trainer = quiet_trainer(tmp_path)
    trainer.test(CounterfactualFineTuner(backbone, distillation=[]), datamodule=dm, verbose=False)
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir())
    assert cached == ["imagenet", "imagenet_r"]  # the test sets only, no held-out split

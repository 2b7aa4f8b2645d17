"""Every image is counted once, in the split that holds it, and skips are reported there."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.data import ImageFolderDataModule
from cfmask.data.folder import DataLayoutWarning, list_images
from cfmask.testing import quiet_trainer, tiny_timm_args
from cfmask.training.callbacks import TestResultsReport

from ._fake_trees import make_folder_set


def test_skipped_image_is_reported_against_the_carved_split_that_holds_it(tmp_path: Path, capsys):
    root = tmp_path / "mine"
    make_folder_set(root, ["cat", "dog", "fox"], per_class=8, ext=".png")
    dm = ImageFolderDataModule(
        root=str(root), val_size=3, test_size=6, num_workers=0, image_size=32, batch_size=4,
        eval_batch_size=4, skip_corrupt=True,
    )  # fmt: skip
    dm.setup("test")
    test_set = dm.test_sets["id"]
    assert len(test_set) == 6
    bad = test_set.samples[2].path
    bad.write_bytes(b"not an image")
    backbone = TimmViT(**tiny_timm_args(depth=1))
    model = CounterfactualFineTuner(backbone, distillation=[])
    out = tmp_path / "results"
    trainer = quiet_trainer(tmp_path, callbacks=[TestResultsReport(output_dir=str(out))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(model, datamodule=dm, verbose=False)
    results = json.loads((out / "results.json").read_text())
    assert results["skipped"] == {"id": [str(bad)]}
    (row,) = [r for r in results["sets"] if r["set"] == "id"]
    assert (row["num_samples"], row["scored"], row["skipped"]) == (6, 5, 1)
    assert model.test_counts == {"id": 5}
    table = capsys.readouterr().out
    (line,) = [ln for ln in table.splitlines() if "id (ID)" in ln]
    assert "│ 5 " in line or " 5 │" in line


def test_symlink_loop_lists_each_image_once(tmp_path: Path):
    make_folder_set(tmp_path / "data", ["cat", "dog"], per_class=3, ext=".png")
    os.symlink(".", tmp_path / "data" / "cat" / "loop")  # cat/loop -> cat
    os.symlink("../cat", tmp_path / "data" / "dog" / "also_cat")  # a second way into cat
    cat = list_images(tmp_path / "data" / "cat")
    assert [p.name for p in cat] == ["img0.png", "img1.png", "img2.png"]
    assert [p.parent.name for p in cat] == ["cat"] * 3
    dog = list_images(tmp_path / "data" / "dog")
    # dog/also_cat is a separate real directory from dog itself, so its files count once there.
    assert sorted(p.name for p in dog) == ["img0.png", "img0.png", "img1.png", "img1.png",
                                           "img2.png", "img2.png"]  # fmt: skip


def test_symlink_loop_does_not_leak_images_across_splits(tmp_path: Path):
    root = tmp_path / "mine"
    make_folder_set(root, ["cat", "dog", "fox"], per_class=10, ext=".png")
    os.symlink(".", root / "cat" / "loop")
    dm = ImageFolderDataModule(root=str(root), val_size=6, test_size=6, num_workers=0, image_size=8)
    dm.setup()
    parts = [dm.train_set, dm.val_set, dm.test_sets["id"]]
    assert sum(len(p) for p in parts) == 30
    real = [{os.path.realpath(s.path) for s in p.samples} for p in parts]
    assert sum(len(r) for r in real) == 30
    assert not (real[0] & real[1] or real[0] & real[2] or real[1] & real[2])


def test_empty_class_folder_is_named_in_a_warning(tmp_path: Path):
    root = tmp_path / "mine"
    make_folder_set(root, ["cat", "dog"], per_class=4, ext=".png")
    (root / "empty_class").mkdir()
    with pytest.warns(DataLayoutWarning, match=r"'empty_class'.*no images"):
        dm = ImageFolderDataModule(root=str(root), num_workers=0, val_size=2, test_size=2)
    assert dm.classes == ["cat", "dog", "empty_class"]

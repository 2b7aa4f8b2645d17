"""LoaderConfig: defaults, validation, resolution, and the loaders built from it."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import pytest
import torch
from _fake_trees import make_folder_set
from torch.utils.data import TensorDataset

from cfmask.data import ImageFolderDataModule, ImageNetOODDataModule, LoaderConfig
from cfmask.data.loading import build_loader, default_num_workers
from cfmask.data.resumable import ResumableDataLoader

_FIELDS = [f.name for f in dataclasses.fields(LoaderConfig)]


@pytest.mark.parametrize("module", [ImageNetOODDataModule, ImageFolderDataModule])
def test_datamodule_keywords_default_to_the_config_defaults(module: type) -> None:
    params = inspect.signature(module).parameters
    assert set(_FIELDS) <= set(params)
    for field in dataclasses.fields(LoaderConfig):
        assert params[field.name].default == field.default, field.name


def test_resolved_fills_the_automatic_choices() -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    auto = LoaderConfig(batch_size=24).resolved()
    assert auto.eval_batch_size == 24
    assert auto.num_workers == default_num_workers() == min(8, cpus or 1)
    explicit = LoaderConfig(batch_size=24, eval_batch_size=5, num_workers=0).resolved()
    assert (explicit.eval_batch_size, explicit.num_workers) == (5, 0)
    assert explicit.resolved() == explicit


def test_config_is_frozen() -> None:
    cfg = LoaderConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be positive, got 0"),
        ({"batch_size": 2.5}, "batch_size must be positive, got 2.5"),
        ({"batch_size": True}, "batch_size must be positive, got True"),
        ({"eval_batch_size": 0}, "eval_batch_size must be positive, got 0"),
        ({"num_workers": -1}, "num_workers must be a non-negative integer"),
        ({"image_size": 0}, "image_size must be positive, got 0"),
        ({"interpolation": "cubic"}, "unknown interpolation 'cubic'; choose one of"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoaderConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pin", "persist", "workers", "on_gpu", "expected"),
    [
        (None, None, 2, True, (True, True)),
        (None, None, 2, False, (False, False)),
        (False, None, 2, True, (False, True)),
        (True, False, 2, False, (True, False)),
        (None, True, 0, True, (True, False)),  # no workers, nothing to keep alive
    ],
)
def test_pin_and_persist_follow_the_device_unless_set(
    pin: bool | None, persist: bool | None, workers: int, on_gpu: bool, expected: tuple
) -> None:
    cfg = LoaderConfig(pin_memory=pin, persistent_workers=persist, num_workers=workers)
    assert (cfg.pin_memory_for(on_gpu), cfg.persistent_workers_for(on_gpu)) == expected
    for train in (True, False):
        loader = build_loader(TensorDataset(torch.zeros(4)), cfg, train=train, on_gpu=on_gpu)
        assert (loader.pin_memory, loader.persistent_workers) == expected


def test_build_loader_train_and_eval_policy() -> None:
    ds = TensorDataset(torch.arange(10))
    cfg = LoaderConfig(batch_size=4, eval_batch_size=3, num_workers=0)
    train = build_loader(ds, cfg, train=True, on_gpu=False)
    assert isinstance(train, ResumableDataLoader) and train.drop_last and len(train) == 2
    test = build_loader(ds, cfg, train=False, on_gpu=False)
    assert not test.drop_last and len(test) == 4
    assert [b[0].tolist() for b in test] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_datamodule_keeps_its_keywords_as_one_resolved_config(tmp_path: Path) -> None:
    make_folder_set(tmp_path / "mine", ["cat", "dog"], per_class=10, ext=".png")
    dm = ImageFolderDataModule(
        root=str(tmp_path / "mine"), batch_size=4, num_workers=0, image_size=8, augment=True
    )
    assert dm.loader_config == LoaderConfig(
        batch_size=4, eval_batch_size=4, num_workers=0, image_size=8, augment=True
    )
    assert (dm.batch_size, dm.eval_batch_size, dm.num_workers, dm.image_size) == (4, 4, 0, 8)
    assert dm.augment and dm.interpolation == "bicubic" and dm.cache_dir is None
    with pytest.raises(ValueError, match="eval_batch_size must be positive"):
        ImageFolderDataModule(root=str(tmp_path / "mine"), eval_batch_size=-2)


def test_setting_batch_size_changes_the_training_loader_only(tmp_path: Path) -> None:
    # Lightning's batch-size finder assigns ``datamodule.batch_size``.
    make_folder_set(tmp_path / "mine", ["cat", "dog"], per_class=10, ext=".png")
    dm = ImageFolderDataModule(
        root=str(tmp_path / "mine"), batch_size=4, num_workers=0, image_size=8, val_size=4
    )
    dm.setup("fit")
    dm.batch_size = 2
    assert dm.loader_config.batch_size == 2 and dm.eval_batch_size == 4
    assert dm.train_dataloader().batch_size == 2 and dm.val_dataloader().batch_size == 4
    with pytest.raises(ValueError, match="batch_size must be positive"):
        dm.batch_size = 0
    assert dm.batch_size == 2

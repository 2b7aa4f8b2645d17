"""Tests of ``cfmask demo`` (Shifted Fashion-MNIST).

The fast tests write small fake IDX files, so they need neither the Debian package
nor the network; the slow test runs ``cfmask demo --quick`` on the real data.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cfmask.demo import data as demo_data
from cfmask.demo.app import main as demo_main
from cfmask.demo.app import run_demo
from cfmask.demo.data import (
    ID_FAMILIES,
    TEST_SET_DOCS,
    BenchmarkConfig,
    DatasetNotFoundError,
    build_benchmark,
    find_fashion_mnist,
    read_idx,
)
from cfmask.demo.runner import PROFILES, FineTuneConfig
from cfmask.demo.teacher import ModelConfig, PretrainConfig


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _fake_fashion(folder: Path, n_train: int = 400, n_test: int = 200, seed: int = 0) -> None:
    """Write four IDX files whose 'garments' are class-dependent bright rectangles."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            h = 8 + 2 * int(y)
            images[i, 14 - h // 2 : 14 + h // 2, 6:22] = 120 + 10 * int(y)
        _write_idx(folder / f"{split}-images-idx3-ubyte", images)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress=False)


@pytest.fixture()
def no_system_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide the Debian copy, the user cache and $CFMASK_DATA_DIR."""
    monkeypatch.setattr(demo_data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CFMASK_DATA_DIR", raising=False)


def test_read_idx_round_trip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x", arr)
    _write_idx(tmp_path / "y", arr, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "y"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "bad")


def test_missing_data_explains_the_fix(tmp_path: Path, no_system_data: None) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        find_fashion_mnist(tmp_path / "empty", allow_install=False)
    text = str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in text
    assert "--data-dir" in text
    assert "torchvision" in text


def test_main_returns_2_without_data(
    tmp_path: Path, no_system_data: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = demo_main(
        [
            "--quick",
            "--no-install",
            "--data-dir",
            str(tmp_path / "nothing"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().out


def test_torchvision_layout_is_found(tmp_path: Path, no_system_data: None) -> None:
    _fake_fashion(tmp_path / "FashionMNIST" / "raw")
    files = find_fashion_mnist(tmp_path, allow_install=False)
    assert set(files) == {"train_images", "train_labels", "test_images", "test_labels"}


def test_benchmark_splits_and_shifts(tmp_path: Path, no_system_data: None) -> None:
    _fake_fashion(tmp_path, n_train=600, n_test=300)
    raw = demo_data.load_fashion_mnist(tmp_path, allow_install=False)
    cfg = BenchmarkConfig(n_pretrain=300, n_finetune=200, n_val=50, n_test=40, cue_strength=0.9)
    bench = build_benchmark(cfg, raw)
    assert list(bench.tests) == list(TEST_SET_DOCS)
    assert bench.ood_names == ["resample", "sketch", "rendition", "new-backgrounds", "anti-cue"]
    k = len(ID_FAMILIES)
    for s in (bench.pretrain, bench.train, bench.val, *bench.tests.values()):
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (3, 32, 32)
        assert s.object_masks.shape == (len(s), 32, 32)
        assert s.object_masks.flatten(1).any(1).all()  # every image shows a garment
    # Fine-tuning: the cue agrees with the class far above chance; pre-training: near chance.
    agree = (bench.train.families == bench.train.labels).float().mean().item()
    assert agree > 0.8
    assert (bench.pretrain.families == bench.pretrain.labels).float().mean().item() < 0.25
    # OOD sets: the anti-cue set never shows the class's own cue, new backgrounds are unseen.
    anti = bench.tests["anti-cue"]
    assert (anti.families != anti.labels).all()
    assert (bench.tests["new-backgrounds"].families >= k).all()
    assert (bench.tests["sketch"].families == -1).all()
    # Deterministic given the seed.
    again = build_benchmark(cfg, raw)
    assert torch.equal(again.train.images, bench.train.images)


def test_benchmark_rejects_too_large_sizes(tmp_path: Path, no_system_data: None) -> None:
    _fake_fashion(tmp_path, n_train=100, n_test=60)
    raw = demo_data.load_fashion_mnist(tmp_path, allow_install=False)
    with pytest.raises(ValueError, match="Fashion-MNIST has"):
        build_benchmark(BenchmarkConfig(n_pretrain=100, n_finetune=10, n_val=10, n_test=5), raw)


def test_tiny_demo_run_writes_every_output(tmp_path: Path, no_system_data: None) -> None:
    """A very small in-process run of the whole pipeline on fake data."""
    _fake_fashion(tmp_path / "data", n_train=260, n_test=120)
    base = PROFILES["quick"]
    profile = dataclasses.replace(
        base,
        bench=BenchmarkConfig(n_pretrain=160, n_finetune=64, n_val=32, n_test=16),
        model=ModelConfig(model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2}),
        pretrain=PretrainConfig(epochs=1, batch_size=32),
        finetune=FineTuneConfig(
            steps=2, batch_size=8, warmup_steps=1, betas=(1.0, 3.0), wise_alphas=(0.0, 0.5, 1.0)
        ),
        seeds=2,
        mask_every=1,
    )
    out = tmp_path / "out"
    payload = run_demo(profile, out, tmp_path / "data", allow_install=False)
    results = json.loads((out / "results.json").read_text())
    assert results["chosen_beta"] in (1.0, 3.0)
    ood = results["benchmark"]["ood_sets"]
    assert len(ood) == 5
    for key in (
        "zero-shot",
        "vanilla",
        "wise-ft",
        "fd",
        "kd",
        "ours-object-single",
        "ours-context-multi",
        "ours-random-single",
        "wise-ours",
        "wise-kd",
    ):
        entry = results["methods"][key]
        assert set(entry["ood"]) == set(ood)
        for stat in (entry["id"], entry["ood_avg"], *entry["ood"].values()):
            assert 0.0 <= stat["mean"] <= 100.0 and stat["std"] >= 0.0
    assert results["methods"]["vanilla"]["id"]["n"] == 2
    rows = results["mask_quality"]["rows"]
    assert [r["threshold"] for r in rows] == [0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    for r in rows:
        assert 0.0 <= r["iou"] <= r["object_mr"] + 1e-9 <= 1.0 + 1e-9
    # Lower thresholds mask at least as much (monotone by construction).
    assert rows[-1]["image_mr"] >= rows[0]["image_mr"]
    with (out / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert {row["method"] for row in table} == set(results["methods"])
    assert (out / "tradeoff.png").stat().st_size > 0
    assert (out / "examples.png").stat().st_size > 0
    assert payload["methods"].keys() == results["methods"].keys()


@pytest.mark.slow
def test_quick_profile_on_real_data(tmp_path: Path) -> None:
    """``cfmask demo --quick`` on the real Fashion-MNIST (installs it on Debian if root)."""
    assert demo_main(["--quick", "--output", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    methods = results["methods"]
    # The benchmark's premise: fine-tuning on the cue-laden data raises ID accuracy.
    assert methods["vanilla"]["id"]["mean"] > methods["zero-shot"]["id"]["mean"]
    for name in ("results.csv", "tradeoff.png", "examples.png"):
        assert (tmp_path / name).stat().st_size > 0

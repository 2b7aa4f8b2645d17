"""Fake Fashion-MNIST files, a tiny pre-trained model and a tiny profile for demo tests."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest

from cfmask.demo import data as demo_data
from cfmask.demo.data import BenchmarkConfig, PoolConfig, build_pretrain_pool
from cfmask.demo.pretrained import save_pretrained
from cfmask.demo.runner import PROFILES, FineTuneConfig, Profile
from cfmask.demo.teacher import ModelConfig, PretrainConfig, pretrain_teacher


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write ``array`` as an IDX file (gzip-compressed as ``<path>.gz`` by default)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def fake_fashion(folder: Path, n_train: int = 400, n_test: int = 200, seed: int = 0) -> None:
    """Write four IDX files whose 'garments' are class-dependent bright rectangles."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            h = 8 + 2 * int(y)
            images[i, 14 - h // 2 : 14 + h // 2, 6:22] = 120 + 10 * int(y)
        write_idx(folder / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress=False)


def hide_system_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide the Debian copy, the user cache and $CFMASK_DATA_DIR."""
    monkeypatch.setattr(demo_data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CFMASK_DATA_DIR", raising=False)


TINY_MODEL = ModelConfig(model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2})
TINY_POOL = PoolConfig(n_images=160)


def tiny_weights(folder: Path, data_dir: Path) -> Path:
    """Pre-train a tiny model for one epoch and save it with its recipe."""
    raw = demo_data.load_fashion_mnist(data_dir, allow_install=False)
    cfg = PretrainConfig(pool=TINY_POOL, epochs=1, batch_size=32)
    state = pretrain_teacher(build_pretrain_pool(TINY_POOL, raw), TINY_MODEL, cfg)
    path = folder / "tiny.safetensors"
    save_pretrained(state, path, TINY_MODEL, cfg, {"id": 0.0}, 1.0)
    return path


def tiny_profile(workers: int = 1) -> Profile:
    """The default profile shrunk to a few images, one block and two steps."""
    return dataclasses.replace(
        PROFILES["default"],
        bench=BenchmarkConfig(n_finetune=64, n_val=32, n_test=16),
        model=TINY_MODEL,
        pretrain=PretrainConfig(pool=TINY_POOL, epochs=1, batch_size=32),
        finetune=FineTuneConfig(
            steps=2,
            batch_size=8,
            warmup_steps=1,
            betas=(1.0, 3.0),
            object_thresholds=(0.3, 0.5),
            context_thresholds=(0.5,),
            random_ratios=(0.5,),
            wise_alphas=(0.0, 0.5, 1.0),
        ),
        seeds=2,
        workers=workers,
        mask_every=1,
    )

"""The cached frozen-teacher relevance (relevance_source="cached_teacher").

Masks equal those of the teacher map computed in the step; the cache is rebuilt when a
file, the weights, the relevance map or the image size changes; a stale, truncated or
altered cache is refused; a fit with it resumes bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.data import ImageFolderDataModule, IndexedDataset, StaleRelevanceCacheError
from cfmask.data.relevance_cache import SCORES_FILE, read_relevance_cache
from cfmask.data.synthetic import SyntheticDataModule, make_synthetic_images
from cfmask.masking import ObjectMasker, RandomMasker, SingleImageRefiller
from cfmask.relevance import AttentionGradRelevance
from cfmask.testing import quiet_trainer, tiny_timm_args
from cfmask.training.checkpoints import LastAndBestCheckpoint
from cfmask.training.objective import INITIAL_TEACHER, CounterfactualObjective
from cfmask.training.teacher_relevance import (
    compute_teacher_relevance,
    open_or_build_teacher_relevance,
    teacher_relevance_key,
)

THRESHOLD = 0.55
FP16_REL = 2.0**-11  # float16 rounding, relative


def _objective(seed: int = 0, relevance: AttentionGradRelevance | None = None):
    torch.manual_seed(seed)
    return CounterfactualObjective(
        TimmViT(**tiny_timm_args(depth=2)),
        masker=ObjectMasker(threshold=THRESHOLD),
        refiller=SingleImageRefiller(),
        relevance=relevance,
        relevance_source="teacher",
    )


def _hand_mask(scores: torch.Tensor) -> torch.Tensor:
    """The reference's object mask: per-image max normalisation, strict threshold."""
    return scores / (scores.amax(dim=1, keepdim=True) + 1e-8) > THRESHOLD


def _margin(scores: torch.Tensor) -> float:
    """Distance of the closest normalised score to the threshold."""
    norm = scores / (scores.amax(dim=1, keepdim=True) + 1e-8)
    return float((norm - THRESHOLD).abs().min())


def test_cached_rows_give_the_masks_of_the_teacher_map_computed_in_the_step():
    objective = _objective()
    images, targets = make_synthetic_images(12, 3, 32, noise=0.2, seed=1)
    dataset = TensorDataset(images, targets)
    cached = compute_teacher_relevance(objective, dataset, batch_size=5, progress=False).half()
    assert cached.shape == (12, 16) and cached.dtype == torch.float16

    batch = torch.tensor([7, 2, 11, 0])  # a shuffled step batch, another batch size
    x, y = images[batch], targets[batch]
    teacher = objective.teachers[INITIAL_TEACHER]
    in_step = AttentionGradRelevance()(teacher, x, y)
    # fp16 storage rounds each score by at most 2^-11 of its value...
    assert torch.allclose(cached[batch].float(), in_step, rtol=FP16_REL, atol=1e-7)
    # ...which cannot move a score across the threshold when none lies that close.
    assert _margin(in_step) > 4 * FP16_REL

    _, mask_in_step = objective.make_counterfactual(x, y)  # relevance computed here
    _, mask_cached = objective.make_counterfactual(x, y, scores=cached[batch].float())
    assert mask_in_step is not None and mask_cached is not None
    assert torch.equal(mask_cached, mask_in_step)
    assert torch.equal(mask_cached, _hand_mask(in_step))
    assert 0 < int(mask_cached.sum()) < mask_cached.numel()


class _Masks(pl.Callback):
    def __init__(self) -> None:
        self.masks: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.masks.append(outputs["mask"].clone())


def _fit(
    root: Path,
    source: str,
    cache_dir: Path | None = None,
    ckpt_path: Path | None = None,
    fail_at: int | None = None,
    callbacks: list[pl.Callback] | None = None,
    max_epochs: int = 2,
):
    pl.seed_everything(0)
    model = CounterfactualFineTuner(
        TimmViT(**tiny_timm_args(depth=2)),
        masker=ObjectMasker(threshold=THRESHOLD), refiller=SingleImageRefiller(),
        relevance_source=source,
        relevance_cache_dir=None if cache_dir is None else str(cache_dir),
        lr=1e-3, warmup_steps=2,
    )  # fmt: skip
    data = SyntheticDataModule(
        num_classes=3, image_size=32, batch_size=4, train_size=12, val_size=8, test_size=4
    )
    cbs = list(callbacks or [])
    cbs.append(
        LastAndBestCheckpoint(
            dirpath=root, monitor="val/acc1", mode="max", save_last=True, every_n_train_steps=1
        )
    )
    if fail_at is not None:
        from .test_exact_resume import _FailAt

        cbs.append(_FailAt(fail_at))
    trainer = quiet_trainer(root, max_epochs=max_epochs, callbacks=cbs, limit_val_batches=1.0)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, trainer


def test_fit_with_the_cached_map_matches_the_in_step_teacher_map(tmp_path):
    # Precondition: no teacher score of the training set sits within fp16 rounding of
    # the threshold, so the two runs must draw the same masks in every step.
    pl.seed_everything(0)
    teacher = TimmViT(**tiny_timm_args(depth=2)).eval()
    data = SyntheticDataModule(num_classes=3, image_size=32, batch_size=4, train_size=12)
    x, y = data._split(12, 0.05, 1).tensors
    assert _margin(AttentionGradRelevance()(teacher, x, y)) > 4 * FP16_REL

    in_step, cached = _Masks(), _Masks()
    ref, _ = _fit(tmp_path / "a", "teacher", callbacks=[in_step])
    model, _ = _fit(tmp_path / "b", "cached_teacher", tmp_path / "cache", callbacks=[cached])
    assert len(cached.masks) == len(in_step.masks) == 6
    for a, b in zip(in_step.masks, cached.masks, strict=True):
        assert torch.equal(a, b)
    # Same masks, same refills: the student ends bit-identical.
    expected = ref.student.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.student.state_dict().items())
    assert len(list((tmp_path / "cache").glob("relevance-*"))) == 1


def test_fit_with_the_cached_map_resumes_bit_for_bit(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    full, _ = _fit(tmp_path / "full", "cached_teacher", cache, max_epochs=3)
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(crashed, "cached_teacher", cache, fail_at=4, max_epochs=3)

    # The resumed run reads the map built before; it must not compute it again.
    def refuse(*args, **kwargs):
        raise AssertionError("the cached map was recomputed")

    monkeypatch.setattr("cfmask.training.teacher_relevance.compute_teacher_relevance", refuse)
    resumed, trainer = _fit(
        crashed, "cached_teacher", cache, ckpt_path=crashed / "last.ckpt", max_epochs=3
    )
    assert trainer.global_step == 9
    expected = full.state_dict()
    different = [k for k, v in resumed.state_dict().items() if not torch.equal(v, expected[k])]
    assert different == []


# ------------------------------------------------------------ rebuild and refusal
def _write_noise(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _folder_train_set(root: Path, image_size: int = 32):
    data = ImageFolderDataModule(
        root=str(root), val_size=2, test_size=2, batch_size=4, num_workers=0,
        image_size=image_size, augment=False,
    )  # fmt: skip
    data.setup("fit")
    assert data.train_set is not None
    return data.train_set


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    for c in range(3):
        for i in range(4):
            _write_noise(root / f"class{c}" / f"{i}.png", seed=10 * c + i)
    return root


def _caches(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("relevance-*") if p.is_dir())


def test_cache_is_reused_and_rebuilt_when_a_file_or_the_model_changes(tmp_path, folder):
    cache = tmp_path / "cache"
    objective = _objective()
    train = _folder_train_set(folder)
    first = open_or_build_teacher_relevance(objective, train, cache, progress=False)
    assert first.shape == (len(train), 16) and len(_caches(cache)) == 1
    stamp = (_caches(cache)[0] / SCORES_FILE).stat().st_mtime_ns

    # Unchanged: read back, not rebuilt.
    again = open_or_build_teacher_relevance(objective, IndexedDataset(train), cache)
    assert torch.equal(again, first) and len(_caches(cache)) == 1
    assert (_caches(cache)[0] / SCORES_FILE).stat().st_mtime_ns == stamp

    # A changed training image: a new cache holding that image's new map.
    changed = train.samples[0].path
    _write_noise(changed, seed=999)
    after_file = open_or_build_teacher_relevance(objective, train, cache, progress=False)
    assert len(_caches(cache)) == 2
    fresh = compute_teacher_relevance(objective, train, progress=False).half()
    assert torch.equal(after_file, fresh)
    assert not torch.equal(after_file[0], first[0])

    # Changed weights, relevance map or image size: each a cache of its own.
    other = _objective(seed=1)
    open_or_build_teacher_relevance(other, train, cache, progress=False)
    assert len(_caches(cache)) == 3
    last_block = _objective(relevance=AttentionGradRelevance(last_blocks=1))
    open_or_build_teacher_relevance(last_block, train, cache, progress=False)
    assert len(_caches(cache)) == 4
    torch.manual_seed(0)
    big = CounterfactualObjective(
        TimmViT(**tiny_timm_args(depth=2, img_size=48)),
        masker=ObjectMasker(threshold=THRESHOLD),
        relevance_source="teacher",
    )
    scores = open_or_build_teacher_relevance(big, _folder_train_set(folder, 48), cache)
    assert scores.shape == (len(train), 36) and len(_caches(cache)) == 5


def test_truncated_altered_or_stale_caches_are_refused(tmp_path, folder):
    cache = tmp_path / "cache"
    objective = _objective()
    train = _folder_train_set(folder)
    open_or_build_teacher_relevance(objective, train, cache, progress=False)
    (directory,) = _caches(cache)
    key = teacher_relevance_key(objective, train)
    scores_file = directory / SCORES_FILE
    good = scores_file.read_bytes()

    scores_file.write_bytes(good[:-2])
    with pytest.raises(StaleRelevanceCacheError, match=r"truncated.*Delete"):
        open_or_build_teacher_relevance(objective, train, cache)

    scores_file.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    with pytest.raises(StaleRelevanceCacheError, match="checksum"):
        read_relevance_cache(directory, key)

    # A cache moved to where another key's cache belongs (here: other weights).
    scores_file.write_bytes(good)
    other = _objective(seed=1)
    other_key = teacher_relevance_key(other, train)
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["key"] == key.as_dict()
    with pytest.raises(StaleRelevanceCacheError, match="another weights"):
        read_relevance_cache(directory, other_key)


# ------------------------------------------------------------------ bad setups
def test_cached_teacher_refuses_augmentation_plain_loaders_and_maskers_without_relevance(
    tmp_path, folder
):
    with pytest.raises(ValueError, match="uses no relevance"):
        CounterfactualFineTuner(
            TimmViT(**tiny_timm_args()), masker=RandomMasker(0.5), relevance_source="cached_teacher"
        )

    def model() -> CounterfactualFineTuner:
        return CounterfactualFineTuner(
            TimmViT(**tiny_timm_args()),
            masker=ObjectMasker(THRESHOLD),
            relevance_source="cached_teacher",
            relevance_cache_dir=str(tmp_path / "cache"),
        )

    augmented = ImageFolderDataModule(
        root=str(folder), val_size=2, test_size=2, batch_size=4, num_workers=0,
        image_size=32, augment=True,
    )  # fmt: skip
    with pytest.raises(ValueError, match="without training augmentation"):
        quiet_trainer(tmp_path, max_steps=1).fit(model(), datamodule=augmented)

    x, y = make_synthetic_images(8, 3, 32, noise=0.1, seed=0)
    plain = DataLoader(TensorDataset(x, y), batch_size=4)
    with pytest.raises(ValueError, match="IndexedDataset"):
        quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(
            model(), train_dataloaders=plain
        )

    no_dir = CounterfactualFineTuner(
        TimmViT(**tiny_timm_args()),
        masker=ObjectMasker(THRESHOLD),
        relevance_source="cached_teacher",
    )
    indexed = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=4)
    with pytest.raises(ValueError, match="relevance_cache_dir"):
        quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(
            no_dir, train_dataloaders=indexed
        )
    # With a plain indexed loader and a directory, it trains.
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model(), train_dataloaders=indexed)
    assert trainer.global_step == 2


def test_the_recipe_fits_through_the_cli_and_its_checkpoint_loads(tmp_path):
    from cfmask.cli import main

    root = Path(__file__).resolve().parents[1]
    recipe = root / "examples" / "configs" / "method" / "ours_single_fill_cached_teacher.yaml"
    tiny = root / "tests" / "conf" / "tiny_fit.yaml"
    main([
        "fit", "-c", str(tiny), "-c", str(recipe),
        f"--model.relevance_cache_dir={tmp_path / 'cache'}",
        f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    assert len(_caches(tmp_path / "cache")) == 1
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    model = CounterfactualFineTuner.load_from_checkpoint(ckpts[0])
    assert model.hparams["relevance_source"] == "cached_teacher"
    assert not any("relevance" in k and "cached" in k for k in model.state_dict())

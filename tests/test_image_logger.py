"""The counterfactual picture: grid contents by hand, and a tiny run's TensorBoard event file."""

from __future__ import annotations

import io

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.data.synthetic import SyntheticDataModule
from cfmask.masking import ObjectMasker, SingleImageRefiller, TokenDropRefiller
from cfmask.masking.base import Counterfactual
from cfmask.testing import quiet_trainer
from cfmask.training import callbacks as cb
from cfmask.training.visualization import MASK_TINT, counterfactual_grid


def _cell(grid, row, col, size=16, pad=2):
    top, left = pad + row * (size + pad), pad + col * (size + pad)
    return grid[:, top : top + size, left : left + size]


def test_grid_rows_are_images_relevance_tinted_mask_and_counterfactual():
    images = torch.rand(2, 3, 16, 16)
    scores = torch.tensor([[0.0, 0.25, 0.5, 1.0], [1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[False, False, False, True], [True, False, False, False]])
    cf = Counterfactual(images.flip(0))
    grid = counterfactual_grid(images, mask, cf, (2, 2), 8, scores=scores)
    assert grid.shape == (3, 2 + 4 * 18, 2 + 2 * 18)
    torch.testing.assert_close(_cell(grid, 0, 1), images[1])
    heat = _cell(grid, 1, 0)
    assert heat[:, :8, 8:].eq(0.25).all() and heat[:, 8:, 8:].eq(1.0).all()
    tinted = _cell(grid, 2, 0)
    tint = torch.tensor(MASK_TINT).view(3, 1, 1)
    # patch 3 (bottom right) is masked: 40 % image + 60 % tint; patch 0 is untouched
    torch.testing.assert_close(tinted[:, 8:, 8:], 0.4 * images[0, :, 8:, 8:] + 0.6 * tint)
    torch.testing.assert_close(tinted[:, :8, :8], images[0, :, :8, :8])
    torch.testing.assert_close(_cell(grid, 3, 0), images[1])


def test_no_fill_counterfactual_shows_hidden_patches_black():
    images = torch.rand(2, 3, 16, 16)
    mask = torch.tensor([[True, False, False, True], [False, True, True, False]])
    cf = TokenDropRefiller()(images, mask, 8)
    grid = counterfactual_grid(images, mask, cf, (2, 2), 8)
    assert grid.shape == (3, 2 + 3 * 18, 2 + 2 * 18)  # no relevance row
    shown = _cell(grid, 2, 1)
    assert shown[:, :8, 8:].eq(0).all() and shown[:, 8:, :8].eq(0).all()
    torch.testing.assert_close(shown[:, :8, :8], images[1, :, :8, :8])


def _fit(tmp_path, tiny_timm_config, callbacks, logger):
    pl.seed_everything(0)
    model = CounterfactualFineTuner(
        TimmViT(**tiny_timm_config),
        masker=ObjectMasker(threshold=0.3),
        refiller=SingleImageRefiller(),
        lr=1e-3,
        warmup_steps=1,
    )
    data = SyntheticDataModule(num_classes=3, batch_size=4, train_size=16, val_size=4)
    trainer = quiet_trainer(
        tmp_path,
        max_steps=4,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    return model, data


def test_tiny_run_writes_the_picture_to_tensorboard_without_changing_training(
    tmp_path, tiny_timm_config
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    image_logger = cb.CounterfactualImageLogger(every_n_steps=2, num_images=4)
    model, data = _fit(tmp_path, tiny_timm_config, [image_logger], logger)
    plain, _ = _fit(tmp_path / "plain", tiny_timm_config, [], False)
    for a, b in zip(model.student.parameters(), plain.student.parameters(), strict=True):
        assert torch.equal(a, b)  # the callback's random draws do not move the run's RNG

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert "train/counterfactuals" in events.Tags()["images"]
    logged = events.Images("train/counterfactuals")
    assert [e.step for e in logged] == [0, 2]
    decoded = Image.open(io.BytesIO(logged[0].encoded_image_string)).convert("RGB")
    picture = torch.from_numpy(np.array(decoded)).permute(2, 0, 1)
    assert tuple(picture.shape) == (3, 2 + 4 * 34, 2 + 4 * 34)  # 4 rows x 4 images of 32 px
    first_batch = next(iter(data.train_dataloader()))[0]
    expected = (first_batch[0] * 255).clamp(0, 255).to(torch.uint8).int()
    assert (_cell(picture, 0, 0, size=32).int() - expected).abs().max() <= 1


def test_without_tensorboard_the_logger_warns_once(tmp_path, tiny_timm_config):
    image_logger = cb.CounterfactualImageLogger(every_n_steps=1, num_images=2)
    with pytest.warns(UserWarning, match="no TensorBoardLogger") as caught:
        _fit(tmp_path, tiny_timm_config, [image_logger], False)
    assert sum("no TensorBoardLogger" in str(w.message) for w in caught) == 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="every_n_steps"):
        cb.CounterfactualImageLogger(every_n_steps=0)
    with pytest.raises(ValueError, match="num_images"):
        cb.CounterfactualImageLogger(num_images=1)


def test_smoke_recipe_logs_to_tensorboard_with_the_picture(tmp_path, recwarn):
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cfmask.cli import main

    smoke = Path(__file__).resolve().parents[1] / "examples" / "configs" / "smoke"
    main(
        [
            "fit",
            "-c",
            str(smoke / "tiny_synthetic.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=2",
            "--trainer.log_every_n_steps=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert not [w for w in recwarn if "CSVLogger" in str(w.message)]
    (log_dir,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("train/counterfactuals")] == [0]
    assert "train/loss" in events.Tags()["scalars"]
    # the recipe's callbacks come on top of the CLI's own results report
    (ckpt,) = tmp_path.rglob("last.ckpt")
    main(
        [
            "test",
            "-c",
            str(smoke / "tiny_synthetic.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            f"--ckpt_path={ckpt}",
        ]
    )
    assert list(tmp_path.rglob("results.json"))


def test_picture_uses_the_object_masks_of_the_fixed_batch(tiny_timm_config):
    from types import SimpleNamespace

    from cfmask.masking import ConstantRefiller, SegmentationMasker

    model = CounterfactualFineTuner(
        TimmViT(**tiny_timm_config), masker=SegmentationMasker(), refiller=ConstantRefiller(0.0)
    )
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :8, :8] = True  # patch 0
    masks[1, 24:, :8] = True  # patch 12
    image_logger = cb.CounterfactualImageLogger(every_n_steps=2, num_images=2)
    trainer = SimpleNamespace(global_step=1, is_global_zero=True, loggers=[])
    image_logger.on_train_batch_start(trainer, model, (images, torch.tensor([0, 1]), masks), 0)
    expected = torch.zeros(2, 16, dtype=torch.bool)
    expected[0, 0] = expected[1, 12] = True
    by_hand = images.clone()
    by_hand[0, :, :8, :8] = 0.0
    by_hand[1, :, 24:, :8] = 0.0
    reference = counterfactual_grid(images, expected, Counterfactual(by_hand), (4, 4), 8)
    torch.testing.assert_close(image_logger.picture(model), reference)

"""Table 2 measures (image MR, object MR, IoU) and the MaskQualityMonitor callback."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.backbones.base import VisionBackbone
from cfmask.functional import mask_overlap_rates
from cfmask.masking import RandomMasker
from cfmask.relevance.base import RelevanceMap
from cfmask.testing import quiet_trainer
from cfmask.training.callbacks import MaskQualityMonitor


class RampRelevance(RelevanceMap):
    """Relevance that grows with the patch index: patch ``i`` of 16 scores ``i / 15``."""

    def forward(self, backbone: VisionBackbone, images: Tensor, targets: Tensor) -> Tensor:
        n = backbone.grid_size[0] * backbone.grid_size[1]
        return torch.arange(n, dtype=torch.float32).div(n - 1).expand(images.shape[0], n)


def test_rates_match_a_count_by_hand():
    masked = torch.zeros(2, 4, 4, dtype=torch.bool)
    objects = torch.zeros(2, 4, 4, dtype=torch.bool)
    masked[0, :2] = True  # 8 of 16 pixels
    objects[0, :, :1] = True  # 4 pixels, 2 of them masked
    masked[1, 0, 0] = True  # 1 pixel; no object
    rates = mask_overlap_rates(masked, objects)
    # image MR 8/16, object MR 2/4, IoU 2/(8+4-2); second image: 1/16, undefined, 0/1.
    assert rates[0].tolist() == pytest.approx([0.5, 0.5, 0.2])
    assert rates[1, 0].item() == pytest.approx(1 / 16)
    assert math.isnan(rates[1, 1].item()) and rates[1, 2].item() == 0.0
    empty = mask_overlap_rates(torch.zeros(1, 2, 2, dtype=torch.bool), objects[:1, :2, :2])
    assert empty[0, 0] == 0.0 and empty[0, 1] == 0.0  # object present, nothing masked


def test_rates_refuse_soft_or_mismatched_masks():
    with pytest.raises(ValueError, match="same \\(B, H, W\\) shape"):
        mask_overlap_rates(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 3).bool())
    with pytest.raises(ValueError, match="threshold soft masks"):
        mask_overlap_rates(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 4))


def _images(n: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.arange(n) % 3


def test_monitor_measures_a_known_relevance_against_known_objects(tiny_timm_config):
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config))
    images, targets = _images(2)
    objects = torch.zeros(2, 32, 32, dtype=torch.bool)
    objects[0, :, :16] = True  # left half
    objects[1, :8, :8] = True  # patch 0 only
    monitor = MaskQualityMonitor(thresholds=(0.5, 0.9), relevance=RampRelevance())
    rates = monitor.measure(model.objective, images, targets, objects)
    # t=0.5 masks patches 8..15 (8/15 > 0.5 > 7/15): the bottom half, 512 of 1024 pixels.
    # Image 0: object MR 256/512, IoU 256/(512 + 512 - 256). Image 1: 0 and 0.
    # t=0.9 masks patches 14, 15 (14/15 > 0.9): 128 pixels at the bottom right, outside
    # both objects.
    expected = torch.tensor(
        [
            [[0.5, 0.5, 1 / 3], [0.5, 0.0, 0.0]],
            [[0.125, 0.0, 0.0], [0.125, 0.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(rates, expected)
    rows = monitor.rows()
    assert [r["threshold"] for r in rows] == [0.9, 0.5]
    assert rows[1]["image_mr"] == pytest.approx(0.5)
    assert rows[1]["object_mr"] == pytest.approx(0.25)
    assert rows[1]["iou"] == pytest.approx(1 / 6)
    assert rows[0]["image_mr"] == pytest.approx(0.125) and rows[0]["iou"] == 0.0
    assert rows[1]["n"] == 2.0


def test_monitor_leaves_out_images_without_object_pixels(tiny_timm_config):
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config))
    images, targets = _images(2)
    objects = torch.zeros(2, 32, 32, dtype=torch.bool)
    objects[0, 16:] = True  # bottom half: exactly the t=0.5 mask
    monitor = MaskQualityMonitor(thresholds=(0.5,), relevance=RampRelevance())
    monitor.measure(model.objective, images, targets, objects)
    assert monitor.count == 1 and monitor.skipped_empty == 1
    assert monitor.rows()[0]["iou"] == pytest.approx(1.0)
    assert monitor.rows()[0]["object_mr"] == pytest.approx(1.0)


def _loader(with_masks: bool) -> DataLoader[tuple[Tensor, ...]]:
    images, targets = _images(8)
    masks = torch.zeros(8, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    tensors = (images, targets, masks) if with_masks else (images, targets)
    return DataLoader(TensorDataset(*tensors), batch_size=4)


def _fit(tiny_timm_config, tmp_path, callbacks, with_masks=True, **kwargs):
    torch.manual_seed(0)
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config), masker=RandomMasker(0.5))
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, enable_checkpointing=False, callbacks=callbacks, **kwargs
    )
    trainer.fit(model, train_dataloaders=_loader(with_masks))
    return model, trainer


def test_monitor_in_training_logs_the_measures_and_changes_nothing(tiny_timm_config, tmp_path):
    monitor = MaskQualityMonitor(thresholds=(0.4, 0.6))
    watched, trainer = _fit(
        tiny_timm_config, tmp_path, [monitor], logger=CSVLogger(tmp_path / "logs")
    )
    plain, _ = _fit(tiny_timm_config, tmp_path, [])
    for a, b in zip(watched.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    assert monitor.count == 8  # both batches, four images each
    logged = trainer.callback_metrics
    for t in ("0.4", "0.6"):
        for name in ("image_mr", "object_mr", "iou"):
            value = float(logged[f"mask_quality/t={t}/{name}"])
            assert 0.0 <= value <= 1.0
    rows = {r["threshold"]: r for r in monitor.rows()}
    assert float(logged["mask_quality/t=0.4/iou"]) == pytest.approx(rows[0.4]["iou"], rel=1e-6)
    # A lower threshold masks a superset of patches.
    assert rows[0.4]["image_mr"] >= rows[0.6]["image_mr"]


def test_monitor_refuses_batches_without_masks(tiny_timm_config, tmp_path):
    with pytest.raises(ValueError, match="masks_root"):
        _fit(tiny_timm_config, tmp_path, [MaskQualityMonitor()], with_masks=False)


def test_monitor_refuses_bad_arguments():
    with pytest.raises(ValueError, match="every_n_batches"):
        MaskQualityMonitor(every_n_batches=0)
    with pytest.raises(ValueError, match="threshold"):
        MaskQualityMonitor(thresholds=(1.5,))
    with pytest.raises(ValueError, match="at least one"):
        MaskQualityMonitor(thresholds=())


def test_monitor_refuses_masks_of_another_size(tiny_timm_config):
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config))
    images, targets = _images(2)
    with pytest.raises(
        ValueError, match=r"MaskQualityMonitor expected object masks .* \(2, 32, 32\)"
    ):
        MaskQualityMonitor().measure(model.objective, images, targets, torch.ones(2, 16, 16))


def test_default_relevance_does_not_replace_a_later_modules_own_map(tiny_timm_config):
    from cfmask.masking import ObjectMasker

    images, targets = _images(2)
    objects = torch.zeros(2, 32, 32, dtype=torch.bool)
    objects[:, 16:] = True
    monitor = MaskQualityMonitor(thresholds=(0.5,))
    plain = CounterfactualFineTuner(TimmViT(**tiny_timm_config))  # no relevance map
    monitor.measure(plain.objective, images, targets, objects)
    assert monitor.relevance is None
    ramp = CounterfactualFineTuner(
        TimmViT(**tiny_timm_config), masker=ObjectMasker(0.5), relevance=RampRelevance()
    )
    rates = monitor.measure(ramp.objective, images, targets, objects)
    torch.testing.assert_close(rates[0, :, 0], torch.full((2,), 0.5, dtype=torch.float64))

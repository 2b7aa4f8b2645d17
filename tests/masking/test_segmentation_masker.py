"""patch_coverage and SegmentationMasker against hand-computed small cases."""

from __future__ import annotations

import pytest
import torch

from cfmask.functional.patches import patch_coverage
from cfmask.masking import SegmentationMasker
from cfmask.testing import check_masker

CPU = torch.device("cpu")


def _square_masks() -> torch.Tensor:
    """Two 16x16 object masks on a 2x2 grid of 8-px patches.

    Image 0: the object is rows 2..9, cols 2..9 (an 8x8 square), so it covers
    6*6 = 36 pixels of patch 0 (rows 0-7, cols 0-7), 6*2 = 12 of patch 1,
    2*6 = 12 of patch 2 and 2*2 = 4 of patch 3 (each patch has 64 pixels).
    Image 1: the object is the whole right half (cols 8..15).
    """
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:10, 2:10] = True
    masks[1, :, 8:] = True
    return masks


def test_patch_coverage_matches_hand_counts() -> None:
    coverage = patch_coverage(_square_masks(), patch_size=8)
    expected = torch.tensor([[36 / 64, 12 / 64, 12 / 64, 4 / 64], [0.0, 1.0, 0.0, 1.0]])
    assert coverage.dtype == torch.float32
    assert torch.allclose(coverage, expected)


def test_patch_coverage_is_row_major_on_a_non_square_grid() -> None:
    masks = torch.zeros(1, 2, 6)  # 1x3 grid of 2-px patches
    masks[0, 0, 2] = 1.0  # one pixel of the middle patch
    masks[0, :, 4:] = 0.5  # soft mask over the last patch
    assert patch_coverage(masks, 2).tolist() == [[0.0, 0.25, 0.5]]


@pytest.mark.parametrize(
    ("masks", "patch_size", "match"),
    [
        (torch.zeros(2, 1, 16, 16, dtype=torch.bool), 8, r"\(B, H, W\)"),
        (torch.zeros(2, 16, 12, dtype=torch.bool), 8, "not divisible by the patch size 8"),
        (torch.zeros(2, 16, 16, dtype=torch.bool), 0, "positive"),
        (torch.full((1, 8, 8), 255.0), 8, r"must lie in \[0, 1\]"),
        (torch.zeros(1, 8, 8, dtype=torch.long), 8, "torch.bool or float"),
    ],
)
def test_patch_coverage_rejects_bad_masks(masks: torch.Tensor, patch_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        patch_coverage(masks, patch_size)


def test_segmentation_masker_masks_patches_at_or_above_min_coverage() -> None:
    coverage = patch_coverage(_square_masks(), patch_size=8)
    mask = SegmentationMasker(min_coverage=0.5)(coverage, 2, (2, 2), CPU)
    assert mask.tolist() == [[True, False, False, False], [False, True, False, True]]
    low = SegmentationMasker(min_coverage=12 / 64)(coverage, 2, (2, 2), CPU)  # ties count
    assert low.tolist() == [[True, True, True, False], [False, True, False, True]]


def test_segmentation_masker_declares_object_masks() -> None:
    assert SegmentationMasker.requires_object_masks
    assert not SegmentationMasker.requires_relevance


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_segmentation_masker_rejects_min_coverage_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match="min_coverage"):
        SegmentationMasker(min_coverage=bad)


def test_segmentation_masker_rejects_non_numbers() -> None:
    with pytest.raises(TypeError, match="min_coverage"):
        SegmentationMasker(min_coverage="0.5")  # type: ignore[arg-type]


def test_segmentation_masker_without_coverage_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"\(images, targets, masks\)"):
        SegmentationMasker()(None, 2, (2, 2), CPU)


def test_segmentation_masker_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        SegmentationMasker()(torch.zeros(2, 3), 2, (2, 2), CPU)


def test_segmentation_masker_passes_the_masker_kit() -> None:
    coverage = patch_coverage(_square_masks(), patch_size=8)
    mask = check_masker(SegmentationMasker(), batch_size=2, grid_size=(2, 2), scores=coverage)
    assert mask.tolist() == [[True, False, False, False], [False, True, False, True]]
    check_masker(SegmentationMasker(min_coverage=1.0))  # default fake coverage, 3x5 grid

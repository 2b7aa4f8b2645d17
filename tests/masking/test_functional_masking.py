"""Tests of cfmask.functional.patches and cfmask.functional.masking against loop oracles."""

from __future__ import annotations

import pytest
import torch

from cfmask.functional import (
    check_grid,
    check_patch_mask,
    keep_index_from_mask,
    multi_image_donors,
    normalize_by_max,
    patch_mask_to_pixels,
    random_keep_count_mask,
    random_patch_mask,
    refill_from_donors,
    single_image_donors,
    threshold_mask,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _oracle_pixels(mask: torch.Tensor, grid: tuple[int, int], p: int) -> torch.Tensor:
    h, w = grid
    out = torch.zeros(mask.shape[0], 1, h * p, w * p, dtype=torch.bool)
    for i in range(mask.shape[0]):
        for n in range(h * w):
            r, c = divmod(n, w)
            out[i, 0, r * p : (r + 1) * p, c * p : (c + 1) * p] = bool(mask[i, n])
    return out


def _oracle_refill(
    images: torch.Tensor, mask: torch.Tensor, donors: torch.Tensor, p: int
) -> torch.Tensor:
    out = images.clone()
    b, _, height, width = images.shape
    w = width // p
    for i in range(b):
        for n in range((height // p) * w):
            if mask[i, n]:
                r, c = divmod(n, w)
                rows, cols = slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)
                out[i, :, rows, cols] = images[int(donors[i, n]), :, rows, cols]
    return out


# --- patches -----------------------------------------------------------------


def test_check_grid_non_square() -> None:
    assert check_grid(torch.zeros(1, 3, 12, 20), 4) == (3, 5)


def test_check_grid_rejects_indivisible_size() -> None:
    with pytest.raises(ValueError, match=r"30x32 is not divisible by the patch size 4"):
        check_grid(torch.zeros(1, 3, 30, 32), 4)


def test_check_grid_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        check_grid(torch.zeros(3, 32, 32), 4)


def test_check_patch_mask_errors() -> None:
    images = torch.zeros(2, 3, 8, 12)
    with pytest.raises(ValueError, match=r"torch\.bool"):
        check_patch_mask(images, torch.zeros(2, 6), 4)
    with pytest.raises(ValueError, match=r"\(B, N\) = \(2, 6\)"):
        check_patch_mask(images, torch.zeros(2, 5, dtype=torch.bool), 4)


def test_patch_mask_to_pixels_matches_loop_oracle() -> None:
    mask = torch.rand(3, 3 * 5, generator=_gen()) < 0.5
    pixels = patch_mask_to_pixels(mask, (3, 5), 4)
    assert pixels.shape == (3, 1, 12, 20) and pixels.dtype == torch.bool
    assert torch.equal(pixels, _oracle_pixels(mask, (3, 5), 4))


def test_patch_mask_to_pixels_rejects_wrong_grid() -> None:
    with pytest.raises(ValueError, match="N = 3\\*5 = 15"):
        patch_mask_to_pixels(torch.zeros(2, 16, dtype=torch.bool), (3, 5), 4)


# --- normalisation and thresholds -------------------------------------------


def test_normalize_by_max_has_no_min_subtraction() -> None:
    scores = torch.tensor([[2.0, 3.0, 4.0], [1.0, 1.0, 0.5]])
    expected = scores / (scores.amax(dim=1, keepdim=True) + 1e-8)
    assert torch.equal(normalize_by_max(scores), expected)
    assert normalize_by_max(scores)[0, 0] == pytest.approx(0.5)  # min-max would give 0


def test_normalize_by_max_zero_row_is_finite() -> None:
    assert torch.equal(normalize_by_max(torch.zeros(1, 4)), torch.zeros(1, 4))


def test_threshold_mask_is_strict() -> None:
    scores = torch.tensor([[0.29, 0.3, 0.31]])
    assert threshold_mask(scores, 0.3).tolist() == [[False, False, True]]


# --- random masks ------------------------------------------------------------


def test_random_patch_mask_rate_and_variable_count() -> None:
    mask = random_patch_mask(64, 196, 0.3, generator=_gen(1))
    assert mask.dtype == torch.bool and mask.shape == (64, 196)
    assert mask.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert len(set(mask.sum(dim=1).tolist())) > 1  # independent per patch: counts vary


def test_random_patch_mask_extremes_and_validation() -> None:
    assert not random_patch_mask(2, 10, 0.0, generator=_gen()).any()
    assert random_patch_mask(2, 10, 1.0, generator=_gen()).all()
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\], got 1.5"):
        random_patch_mask(2, 10, 1.5)


def test_random_patch_mask_is_reproducible_with_generator() -> None:
    assert torch.equal(
        random_patch_mask(4, 49, 0.5, generator=_gen(3)),
        random_patch_mask(4, 49, 0.5, generator=_gen(3)),
    )


@pytest.mark.parametrize(
    ("num_patches", "ratio", "kept"), [(49, 0.75, 12), (196, 0.5, 98), (10, 0.0, 10), (10, 1.0, 0)]
)
def test_random_keep_count_mask_exact_count(num_patches: int, ratio: float, kept: int) -> None:
    mask = random_keep_count_mask(8, num_patches, ratio, generator=_gen())
    assert (~mask).sum(dim=1).tolist() == [kept] * 8


def test_random_keep_count_mask_is_uniform_over_patches() -> None:
    mask = random_keep_count_mask(2000, 8, 0.5, generator=_gen(2))
    kept_rate = (~mask).float().mean(dim=0)
    assert torch.allclose(kept_rate, torch.full((8,), 0.5), atol=0.05)
    assert len({tuple(row) for row in mask.tolist()}) > 20  # rows differ


# --- donors -----------------------------------------------------------------


def test_single_image_donors_allow_self_is_permutation_with_fixed_points() -> None:
    g = _gen(4)
    saw_self = False
    for _ in range(50):
        donors = single_image_donors(4, allow_self=True, generator=g)
        assert sorted(donors.tolist()) == [0, 1, 2, 3]
        saw_self |= bool((donors == torch.arange(4)).any())
    assert saw_self  # the reference's randperm can pair an image with itself


@pytest.mark.parametrize("batch_size", [2, 3, 7])
def test_single_image_donors_without_self(batch_size: int) -> None:
    g = _gen(5)
    seen = set()
    for _ in range(60):
        donors = single_image_donors(batch_size, allow_self=False, generator=g)
        assert donors.dtype == torch.long
        assert sorted(donors.tolist()) == list(range(batch_size))  # each donates once
        assert not bool((donors == torch.arange(batch_size)).any())  # never itself
        seen.add(tuple(donors.tolist()))
    if batch_size == 2:
        assert seen == {(1, 0)}  # the only way for two images to swap
    else:
        assert len(seen) > 1  # random, not a fixed shift


def test_single_image_donors_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        single_image_donors(1, allow_self=False)
    with pytest.raises(ValueError, match="at least 1"):
        single_image_donors(0)
    assert single_image_donors(1).tolist() == [0]


def test_multi_image_donors_never_self_and_cover_all_others() -> None:
    donors = multi_image_donors(5, 400, generator=_gen(6))
    assert donors.shape == (5, 400) and donors.dtype == torch.long
    for i in range(5):
        row = set(donors[i].tolist())
        assert i not in row
        assert row == set(range(5)) - {i}  # U{1..B-1} shift reaches every other image


def test_multi_image_donors_rejects_batch_of_one() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        multi_image_donors(1, 4)


# --- refill ------------------------------------------------------------------


def test_refill_from_donors_matches_loop_oracle() -> None:
    g = _gen(7)
    images = torch.rand(4, 3, 12, 20, generator=g)
    mask = torch.rand(4, 15, generator=g) < 0.5
    donors = torch.randint(0, 4, (4, 15), generator=g)
    out = refill_from_donors(images, mask, donors, 4)
    assert torch.equal(out, _oracle_refill(images, mask, donors, 4))


def test_refill_from_donors_equals_reference_single_fill_formula() -> None:
    g = _gen(8)
    images = torch.rand(5, 3, 8, 8, generator=g)
    mask = torch.rand(5, 4, generator=g) < 0.5
    perm = torch.randperm(5, generator=g)
    pix = patch_mask_to_pixels(mask, (2, 2), 4).float()
    reference = images * (1 - pix) + images[perm] * pix  # x*(1-m) + x[idx]*m
    out = refill_from_donors(images, mask, perm[:, None].expand(5, 4), 4)
    assert torch.equal(out, reference)


def test_refill_from_donors_rejects_bad_donor_shape() -> None:
    with pytest.raises(ValueError, match="donors_per_patch"):
        refill_from_donors(
            torch.zeros(2, 3, 8, 8),
            torch.zeros(2, 4, dtype=torch.bool),
            torch.zeros(2, 3).long(),
            4,
        )


# --- keep index --------------------------------------------------------------


def test_keep_index_from_mask_matches_loop_oracle() -> None:
    mask = random_keep_count_mask(6, 20, 0.6, generator=_gen(9))
    keep = keep_index_from_mask(mask)
    oracle = [[n for n in range(20) if not mask[i, n]] for i in range(6)]
    assert keep.dtype == torch.long and keep.tolist() == oracle


def test_keep_index_from_mask_all_dropped() -> None:
    assert keep_index_from_mask(torch.ones(3, 4, dtype=torch.bool)).shape == (3, 0)


def test_keep_index_from_mask_unequal_counts_explains_fix() -> None:
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError, match=r"exact_count=True") as info:
        keep_index_from_mask(mask)
    assert "[2, 1]" in str(info.value)


def test_keep_index_from_mask_rejects_non_bool() -> None:
    with pytest.raises(ValueError, match=r"torch\.bool"):
        keep_index_from_mask(torch.zeros(2, 3))

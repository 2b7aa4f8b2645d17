"""Semantics of the refillers, checked against explicit loops over patches."""

from __future__ import annotations

import pytest
import torch

from cfmask.functional import random_keep_count_mask
from cfmask.masking import (
    AttentionMaskRefiller,
    ConstantRefiller,
    Counterfactual,
    MultiImageRefiller,
    Refiller,
    SingleImageRefiller,
    TokenDropRefiller,
)
from cfmask.testing import check_component_config, check_refiller

P = 4
GRID = (3, 5)


def _unique_images(batch: int, channels: int = 3) -> torch.Tensor:
    """Images whose every pixel value is unique, so a copied patch reveals its source."""
    h, w = GRID
    count = batch * channels * h * P * w * P
    return (torch.arange(count, dtype=torch.float64) / count).reshape(batch, channels, h * P, w * P)


def _patch(images: torch.Tensor, i: int, n: int) -> torch.Tensor:
    r, c = divmod(n, GRID[1])
    return images[i, :, r * P : (r + 1) * P, c * P : (c + 1) * P]


def _donor_table(
    images: torch.Tensor, out: torch.Tensor, mask: torch.Tensor
) -> dict[tuple[int, int], int]:
    """For each masked (image, patch), find the image whose same-position patch was copied."""
    table = {}
    batch = images.shape[0]
    for i in range(batch):
        for n in range(GRID[0] * GRID[1]):
            if not mask[i, n]:
                assert torch.equal(_patch(out, i, n), _patch(images, i, n)), (
                    "unmasked patch changed"
                )
                continue
            sources = [
                j for j in range(batch) if torch.equal(_patch(out, i, n), _patch(images, j, n))
            ]
            assert len(sources) == 1, "masked patch is not the same-position patch of one image"
            table[(i, n)] = sources[0]
    return table


def _random_mask(batch: int, seed: int, rate: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, GRID[0] * GRID[1], generator=g) < rate


def test_single_fill_takes_same_position_patches_from_one_partner() -> None:
    images = _unique_images(6)
    mask = _random_mask(6, seed=0)
    torch.manual_seed(0)
    out = SingleImageRefiller()(images, mask, P).images
    table = _donor_table(images, out, mask)
    for i in range(6):
        assert len({table[(i, n)] for n in range(15) if mask[i, n]}) <= 1  # one donor per image


@pytest.mark.parametrize("batch", [2, 3, 8])
def test_single_fill_without_self_is_a_derangement(batch: int) -> None:
    images = _unique_images(batch)
    mask = torch.ones(batch, 15, dtype=torch.bool)
    torch.manual_seed(1)
    refiller = SingleImageRefiller(allow_self=False)
    for _ in range(20):
        table = _donor_table(images, refiller(images, mask, P).images, mask)
        donors = [table[(i, 0)] for i in range(batch)]
        assert all(table[(i, n)] == donors[i] for i in range(batch) for n in range(15))
        assert sorted(donors) == list(range(batch))  # each image donates exactly once
        assert all(donors[i] != i for i in range(batch))  # never to itself


def test_single_fill_with_self_allowed_can_pair_an_image_with_itself() -> None:
    images = _unique_images(4)
    mask = torch.ones(4, 15, dtype=torch.bool)
    torch.manual_seed(2)
    refiller = SingleImageRefiller(allow_self=True)
    saw_self = False
    for _ in range(40):
        out = refiller(images, mask, P).images
        donors = [_donor_table(images, out, mask)[(i, 0)] for i in range(4)]
        assert sorted(donors) == [0, 1, 2, 3]  # still a permutation
        saw_self |= any(donors[i] == i for i in range(4))
    assert saw_self


def test_multi_fill_never_self_and_mixes_sources() -> None:
    images = _unique_images(5)
    mask = torch.ones(5, 15, dtype=torch.bool)
    torch.manual_seed(3)
    table = _donor_table(images, MultiImageRefiller()(images, mask, P).images, mask)
    assert all(donor != i for (i, _), donor in table.items())
    assert any(len({table[(i, n)] for n in range(15)}) > 1 for i in range(5))  # per-patch sources


def test_multi_fill_respects_mask() -> None:
    images = _unique_images(4)
    mask = _random_mask(4, seed=4)
    torch.manual_seed(4)
    _donor_table(images, MultiImageRefiller()(images, mask, P).images, mask)


def test_constant_fill_matches_loop_oracle() -> None:
    images = _unique_images(3)
    mask = _random_mask(3, seed=5)
    out = ConstantRefiller(0.25)(images, mask, P).images
    for i in range(3):
        for n in range(15):
            expected = (
                torch.full_like(_patch(images, i, n), 0.25) if mask[i, n] else _patch(images, i, n)
            )
            assert torch.equal(_patch(out, i, n), expected)


def test_token_drop_returns_kept_indices_and_original_pixels() -> None:
    images = _unique_images(4)
    mask = random_keep_count_mask(4, 15, 0.6, generator=torch.Generator().manual_seed(6))
    cf = TokenDropRefiller()(images, mask, P)
    assert torch.equal(cf.images, images) and cf.key_mask is None
    assert cf.keep_index is not None
    assert cf.keep_index.tolist() == [[n for n in range(15) if not mask[i, n]] for i in range(4)]


def test_token_drop_needs_a_fixed_keep_count() -> None:
    mask = torch.zeros(2, 15, dtype=torch.bool)
    mask[0, 0] = True
    with pytest.raises(ValueError, match="RandomMasker\\(exact_count=True\\)"):
        TokenDropRefiller()(_unique_images(2), mask, P)


def test_attention_mask_refiller_returns_key_mask() -> None:
    images = _unique_images(3)
    mask = _random_mask(3, seed=7)
    cf = AttentionMaskRefiller()(images, mask, P)
    assert torch.equal(cf.images, images) and cf.keep_index is None
    assert cf.key_mask is not None and torch.equal(cf.key_mask, mask)


@pytest.mark.parametrize(
    "refiller", [SingleImageRefiller(), SingleImageRefiller(False), MultiImageRefiller()], ids=repr
)
def test_batch_of_one_is_rejected_with_a_fix(refiller: Refiller) -> None:
    assert refiller.min_batch_size == 2
    with pytest.raises(ValueError, match="drop_last=True"):
        refiller(_unique_images(1), torch.ones(1, 15, dtype=torch.bool), P)


def test_pixel_refillers_detach() -> None:
    images = _unique_images(3).float().requires_grad_(True)
    mask = _random_mask(3, seed=8)
    for refiller in (
        SingleImageRefiller(),
        MultiImageRefiller(),
        ConstantRefiller(),
        AttentionMaskRefiller(),
    ):
        assert not refiller(images, mask, P).images.requires_grad


def test_mask_that_does_not_fit_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(B, N\) = \(2, 15\)"):
        SingleImageRefiller()(_unique_images(2), torch.ones(2, 16, dtype=torch.bool), P)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_constant_value_is_validated(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"value must be in \[0, 1\].*got {bad}"):
        ConstantRefiller(bad)


def test_allow_self_is_validated() -> None:
    with pytest.raises(TypeError, match="allow_self"):
        SingleImageRefiller(allow_self="no")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "refiller",
    [
        SingleImageRefiller(),
        SingleImageRefiller(allow_self=False),
        MultiImageRefiller(),
        ConstantRefiller(),
        ConstantRefiller(value=0.5),
        AttentionMaskRefiller(),
    ],
    ids=repr,
)
def test_builtin_refillers_pass_the_test_kit(refiller: Refiller) -> None:
    assert isinstance(check_refiller(refiller), Counterfactual)


def test_token_drop_passes_the_test_kit() -> None:
    mask = random_keep_count_mask(4, 15, 0.75, generator=torch.Generator().manual_seed(0))
    cf = check_refiller(TokenDropRefiller(), mask=mask)
    assert cf.keep_index is not None and cf.keep_index.shape == (4, 3)


def test_configs_round_trip() -> None:
    rebuilt = check_component_config(SingleImageRefiller(allow_self=False))
    assert rebuilt.config() == {
        "class_path": "cfmask.masking.refillers.SingleImageRefiller",
        "init_args": {"allow_self": False},
    }
    assert check_component_config(MultiImageRefiller()).config()["init_args"] == {}
    assert check_component_config(ConstantRefiller(0.5)).config()["init_args"] == {"value": 0.5}

"""cfmask.testing catches broken plugins."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cfmask.masking import Counterfactual, Masker, Refiller
from cfmask.testing import check_masker, check_refiller, fake_scores


class _FloatMasker(Masker):
    def forward(
        self,
        scores: Tensor | None,
        batch_size: int,
        grid_size: tuple[int, int],
        device: torch.device,
    ) -> Tensor:
        return torch.zeros(batch_size, grid_size[0] * grid_size[1], device=device)


class _WrongShapeMasker(Masker):
    def forward(
        self,
        scores: Tensor | None,
        batch_size: int,
        grid_size: tuple[int, int],
        device: torch.device,
    ) -> Tensor:
        return torch.zeros(batch_size, grid_size[0], grid_size[1], dtype=torch.bool, device=device)


class _ForgetfulMasker(Masker):
    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self._k = k  # breaks the Component contract: not stored as `k`

    def forward(
        self,
        scores: Tensor | None,
        batch_size: int,
        grid_size: tuple[int, int],
        device: torch.device,
    ) -> Tensor:
        return torch.zeros(batch_size, grid_size[0] * grid_size[1], dtype=torch.bool, device=device)


class _NoisyRefiller(Refiller):
    def forward(self, images: Tensor, mask: Tensor, patch_size: int) -> Counterfactual:
        return Counterfactual((images.detach() * 0.5).clamp(0, 1))


class _GradRefiller(Refiller):
    def forward(self, images: Tensor, mask: Tensor, patch_size: int) -> Counterfactual:
        return Counterfactual(images * 1.0)


class _InPlaceRefiller(Refiller):
    def forward(self, images: Tensor, mask: Tensor, patch_size: int) -> Counterfactual:
        mask.zero_()
        return Counterfactual(images.detach())


def test_fake_scores_shape_and_range() -> None:
    scores = fake_scores(3, 10, torch.Generator().manual_seed(0))
    assert scores.shape == (3, 10)
    assert float(scores.min()) >= 0 and torch.equal(scores.amax(dim=1), torch.ones(3))


def test_kit_rejects_float_mask() -> None:
    with pytest.raises(AssertionError, match=r"torch\.bool"):
        check_masker(_FloatMasker())


def test_kit_rejects_wrong_shape() -> None:
    with pytest.raises(AssertionError, match=r"expected \(B, N\)"):
        check_masker(_WrongShapeMasker())


def test_kit_rejects_component_contract_break() -> None:
    with pytest.raises(AttributeError, match="does not store its __init__ argument 'k'"):
        check_masker(_ForgetfulMasker())


def test_kit_rejects_changes_outside_the_mask() -> None:
    with pytest.raises(AssertionError, match="did not select"):
        check_refiller(_NoisyRefiller())
    check_refiller(_NoisyRefiller(), unmasked_unchanged=False)


def test_kit_rejects_images_with_grad() -> None:
    with pytest.raises(AssertionError, match="detached"):
        check_refiller(_GradRefiller())


def test_kit_rejects_in_place_edits() -> None:
    with pytest.raises(AssertionError, match="in place"):
        check_refiller(_InPlaceRefiller())


def test_kit_restores_global_rng() -> None:
    from cfmask.masking import RandomMasker

    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    check_masker(RandomMasker())
    assert torch.equal(torch.rand(3), expected)

"""Semantics of ObjectMasker, ContextMasker and RandomMasker."""

from __future__ import annotations

import pytest
import torch

from cfmask.functional import normalize_by_max
from cfmask.masking import ContextMasker, ObjectMasker, RandomMasker
from cfmask.testing import check_masker, fake_scores

CPU = torch.device("cpu")


def _scores(batch: int = 6, n: int = 20, seed: int = 0) -> torch.Tensor:
    return fake_scores(batch, n, torch.Generator().manual_seed(seed)) * 3.0


def test_object_masker_is_strict_threshold_on_max_normalised_scores() -> None:
    scores = torch.tensor([[1.0, 2.0, 0.5, 1.5]])  # max 2 -> normalised [0.5, 1, 0.25, 0.75]
    assert normalize_by_max(scores)[0, 0].item() == 0.5  # exact in float32 (2 + 1e-8 == 2)
    assert ObjectMasker(0.5)(scores, 1, (2, 2), CPU).tolist() == [[False, True, False, True]]
    assert ContextMasker(0.5)(scores, 1, (2, 2), CPU).tolist() == [[True, False, True, False]]


def test_object_masker_does_not_subtract_the_minimum() -> None:
    scores = torch.tensor([[0.5, 0.6, 1.0]])  # min-max would give [0, 0.2, 1]
    assert ObjectMasker(0.55)(scores, 1, (1, 3), CPU).tolist() == [[False, True, True]]


def test_object_masker_is_invariant_to_score_scale() -> None:
    scores = _scores()
    masker = ObjectMasker(0.4)
    assert torch.equal(masker(scores, 6, (4, 5), CPU), masker(scores * 4.0, 6, (4, 5), CPU))


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 0.5, 0.6, 0.9, 0.99])
def test_context_is_complement_of_object_and_argmax_rule(threshold: float) -> None:
    scores = _scores(seed=1)
    obj = ObjectMasker(threshold)(scores, 6, (4, 5), CPU)
    ctx = ContextMasker(threshold)(scores, 6, (4, 5), CPU)
    assert torch.equal(ctx, ~obj)
    top = scores.argmax(dim=1)
    rows = torch.arange(6)
    assert obj[rows, top].all()  # the most relevant patch is always masked in object mode
    assert not ctx[rows, top].any()  # ... and never in context mode


def test_object_masker_matches_loop_oracle() -> None:
    scores = _scores(seed=2)
    mask = ObjectMasker(0.3)(scores, 6, (4, 5), CPU)
    for i in range(6):
        peak = max(scores[i].tolist())
        for n in range(20):
            normalised = scores[i, n].item() / (peak + 1e-8)
            assert bool(mask[i, n]) == (normalised > 0.3)


@pytest.mark.parametrize("cls", [ObjectMasker, ContextMasker])
def test_relevance_maskers_need_scores(cls: type[ObjectMasker] | type[ContextMasker]) -> None:
    assert cls.requires_relevance
    with pytest.raises(ValueError, match="AttentionGradRelevance"):
        cls()(None, 2, (2, 2), CPU)
    with pytest.raises(ValueError, match=r"\(batch_size, h\*w\) = \(2, 4\)"):
        cls()(torch.rand(2, 5), 2, (2, 2), CPU)
    with pytest.raises(ValueError, match=r"\(batch_size, h\*w\) = \(3, 4\)"):
        cls()(torch.rand(2, 4), 3, (2, 2), CPU)


@pytest.mark.parametrize("cls", [ObjectMasker, ContextMasker])
@pytest.mark.parametrize("bad", [-0.1, 1.2])
def test_bad_threshold_is_rejected(
    cls: type[ObjectMasker] | type[ContextMasker], bad: float
) -> None:
    with pytest.raises(
        ValueError, match=rf"threshold must be in \[0, 1\] \(inclusive\), got {bad}"
    ):
        cls(threshold=bad)


@pytest.mark.parametrize("bad", [-0.5, 2.0])
def test_bad_ratio_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"ratio must be in \[0, 1\] \(inclusive\), got {bad}"):
        RandomMasker(ratio=bad)


def test_non_numeric_arguments_are_rejected() -> None:
    with pytest.raises(TypeError, match="threshold"):
        ObjectMasker(threshold="0.3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exact_count"):
        RandomMasker(exact_count=1)  # type: ignore[arg-type]


def test_random_masker_bernoulli_statistics() -> None:
    masker = RandomMasker(ratio=0.3)
    assert not masker.requires_relevance
    torch.manual_seed(0)
    mask = masker(None, 64, (14, 14), CPU)
    assert mask.shape == (64, 196) and mask.dtype == torch.bool
    assert mask.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert len(set(mask.sum(dim=1).tolist())) > 1


def test_random_masker_exact_count() -> None:
    torch.manual_seed(0)
    mask = RandomMasker(ratio=0.75, exact_count=True)(None, 16, (7, 7), CPU)
    assert (~mask).sum(dim=1).tolist() == [12] * 16  # int(49 * 0.25)


def test_random_masker_ignores_scores_and_is_seeded() -> None:
    masker = RandomMasker(0.5)
    scores = torch.rand(4, 9)
    torch.manual_seed(3)
    first = masker(scores, 4, (3, 3), CPU)
    torch.manual_seed(3)
    assert torch.equal(first, masker(None, 4, (3, 3), CPU))


@pytest.mark.parametrize(
    "masker",
    [
        ObjectMasker(),
        ObjectMasker(threshold=0.6),
        ContextMasker(),
        ContextMasker(threshold=0.3),
        RandomMasker(),
        RandomMasker(ratio=0.75, exact_count=True),
    ],
    ids=repr,
)
def test_builtin_maskers_pass_the_test_kit(
    masker: ObjectMasker | ContextMasker | RandomMasker,
) -> None:
    mask = check_masker(masker)
    assert mask.shape == (4, 15)


def test_default_config() -> None:
    assert ObjectMasker().config() == {
        "class_path": "cfmask.masking.maskers.ObjectMasker",
        "init_args": {"threshold": 0.3},
    }
    assert ContextMasker().config()["init_args"] == {"threshold": 0.5}
    assert RandomMasker().config()["init_args"] == {"ratio": 0.5, "exact_count": False}

"""CounterfactualObjective: every loss term against an independent recomputation, the
pass-sharing and fusion shortcuts against the straightforward path, and the result type.

Everything here runs the objective as a plain module, without a Trainer.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cfmask.losses import FeatureDistillationLoss, LogitDistillationLoss
from cfmask.masking import Masker
from cfmask.masking.maskers import ObjectMasker, RandomMasker
from cfmask.masking.refillers import ConstantRefiller, MultiImageRefiller, SingleImageRefiller
from cfmask.training.objective import CounterfactualObjective, ObjectiveResult, teacher_key

from .helpers.model_inputs import fixed_batch as _batch
from .helpers.model_inputs import perturb as _perturb
from .helpers.model_inputs import tiny_backbone as _backbone


class ParityMasker(Masker):
    """Deterministic test masker: masks patches where (row + col) is even."""

    requires_relevance: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()

    def forward(self, scores, batch_size, grid_size, device):  # type: ignore[no-untyped-def]
        h, w = grid_size
        rows = torch.arange(h)[:, None]
        cols = torch.arange(w)[None, :]
        board = ((rows + cols) % 2 == 0).flatten()
        return board.expand(batch_size, -1).to(device)


def _parity_zeroed(x: Tensor) -> Tensor:
    """x_cf by hand: zero every 8x8 patch of a 32-px image whose (row + col) is even."""
    x_cf = x.clone()
    for r in range(4):
        for c in range(4):
            if (r + c) % 2 == 0:
                x_cf[:, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = 0.0
    return x_cf


def test_loss_matches_independent_recomputation(tiny_timm_config):
    objective = CounterfactualObjective(
        _backbone(tiny_timm_config), masker=ParityMasker(), refiller=ConstantRefiller(0.0)
    )
    initial = copy.deepcopy(objective.student).eval()
    _perturb(objective.student)
    x, y = _batch()
    out = objective(x, y)

    x_cf = _parity_zeroed(x)
    ce = F.cross_entropy(objective.student(x), y)
    s = objective.student.forward_features(x_cf)
    with torch.no_grad():
        t = initial.forward_features(x_cf)
    fd = 30.0 * ((s - t) ** 2).sum() / s.numel()
    torch.testing.assert_close(out.loss_ce, ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss_distill, fd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, ce + fd, rtol=1e-5, atol=1e-6)


def test_result_reports_each_term_the_mask_and_the_counterfactual(tiny_timm_config):
    objective = CounterfactualObjective(
        _backbone(tiny_timm_config),
        masker=ParityMasker(),
        refiller=ConstantRefiller(0.0),
        distillation=[
            FeatureDistillationLoss(weight=2.0),
            LogitDistillationLoss(weight=0.5, temperature=2.0),
        ],
    )
    initial = copy.deepcopy(objective.student).eval()
    _perturb(objective.student)
    x, y = _batch()
    out = objective(x, y)

    assert isinstance(out, ObjectiveResult)
    with pytest.raises(AttributeError):
        out.loss = out.loss_ce  # type: ignore[misc]  # frozen
    x_cf = _parity_zeroed(x)
    with torch.no_grad():
        s_cf = objective.student.forward_features(x_cf)
        t_cf = initial.forward_features(x_cf)
        fd = 2.0 * ((s_cf - t_cf) ** 2).mean()
        s_logits = objective.student(x) / 2.0
        p_t = (initial(x) / 2.0).softmax(-1)
        kd = 0.5 * 4.0 * (p_t * (p_t.log() - s_logits.log_softmax(-1))).sum(-1).mean()
    assert len(out.distill_terms) == 2
    torch.testing.assert_close(out.distill_terms[0].detach(), fd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.distill_terms[1].detach(), kd, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss_distill.detach(), fd + kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits.detach(), objective.student(x).detach())
    assert out.logits.shape == (4, 3)

    board = torch.tensor([(r + c) % 2 == 0 for r in range(4) for c in range(4)])
    assert out.mask is not None and out.mask.dtype == torch.bool
    assert torch.equal(out.mask, board.expand(4, -1))
    assert out.mask_fraction is not None and out.mask_fraction.item() == 0.5
    assert out.counterfactual is not None
    torch.testing.assert_close(out.counterfactual.images, x_cf)


def test_without_masker_the_counterfactual_is_the_batch_and_there_is_no_mask(tiny_timm_config):
    objective = CounterfactualObjective(_backbone(tiny_timm_config))
    x, y = _batch()
    out = objective(x, y)
    assert out.mask is None and out.mask_fraction is None
    assert out.counterfactual is not None and out.counterfactual.images is x
    assert len(out.distill_terms) == 1


def test_no_masker_distils_on_clean_images(tiny_timm_config):
    objective = CounterfactualObjective(_backbone(tiny_timm_config))
    teacher = copy.deepcopy(objective.student).eval()
    _perturb(objective.student)
    x, y = _batch()
    out = objective(x, y)
    with torch.no_grad():
        expected = 30.0 * F.mse_loss(
            objective.student.forward_features(x), teacher.forward_features(x)
        )
    torch.testing.assert_close(out.loss_distill.detach(), expected, rtol=1e-5, atol=1e-6)


def test_vanilla_fine_tuning_has_no_teacher(tiny_timm_config):
    objective = CounterfactualObjective(_backbone(tiny_timm_config), distillation=[])
    assert len(objective.teachers) == 0
    x, y = _batch()
    out = objective(x, y)
    assert out.loss_distill.item() == 0.0
    assert out.distill_terms == ()
    assert out.counterfactual is None and out.mask is None
    torch.testing.assert_close(out.loss, F.cross_entropy(objective.student(x), y))


def test_kd_term_uses_temperature_on_logits(tiny_timm_config):
    objective = CounterfactualObjective(
        _backbone(tiny_timm_config),
        distillation=[LogitDistillationLoss(weight=1.0, temperature=10.0)],
    )
    teacher = copy.deepcopy(objective.student).eval()
    _perturb(objective.student)
    x, y = _batch()
    out = objective(x, y)
    s = objective.student(x).detach() / 10.0
    t = teacher(x).detach() / 10.0
    p_t = t.softmax(-1)
    kl = (p_t * (p_t.log() - s.log_softmax(-1))).sum(-1).mean() * 100.0
    torch.testing.assert_close(out.loss_distill.detach(), kl, rtol=1e-4, atol=1e-6)


def test_teachers_stay_frozen_and_in_eval_mode(tiny_timm_config):
    objective = CounterfactualObjective(_backbone(tiny_timm_config), masker=RandomMasker(0.5))
    objective.train()
    teacher = objective.teachers["initial"]
    assert objective.student.training and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    x, y = _batch()
    objective(x, y).loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in objective.student.parameters())


@pytest.mark.parametrize("masker", [None, ParityMasker()])
def test_fused_student_pass_matches_separate_passes(tiny_timm_config, masker):
    torch.manual_seed(0)
    base = CounterfactualObjective(
        _backbone(tiny_timm_config), masker=masker, refiller=ConstantRefiller(0.5)
    )
    _perturb(base.student)
    results = []
    for fuse in (True, False):
        objective = copy.deepcopy(base)
        objective.fuse_student_passes = fuse
        x, y = _batch()
        loss = objective(x, y).loss
        grads = torch.autograd.grad(loss, list(objective.student.parameters()))
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("refiller", [SingleImageRefiller(allow_self=False), MultiImageRefiller()])
def test_shared_relevance_pass_matches_separate_passes(tiny_timm_config, refiller):
    base = CounterfactualObjective(
        _backbone(tiny_timm_config), masker=ObjectMasker(0.3), refiller=refiller
    )
    _perturb(base.student)
    base.train()
    x, y = _batch()
    results = []
    for share in (True, False):
        objective = copy.deepcopy(base)
        objective.share_relevance_pass = share
        assert objective.can_share_relevance_pass() is share
        torch.manual_seed(7)  # same donors in both runs
        out = objective(x, y)
        grads = torch.autograd.grad(out.loss, list(objective.student.parameters()))
        assert all(p.grad is None for p in objective.student.parameters())
        assert out.mask is not None
        results.append((out.loss.detach(), out.loss_distill.detach(), grads, out.mask))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    for g0, g1 in zip(results[0][2], results[1][2], strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)
    assert torch.equal(results[0][3], results[1][3])


def test_relevance_pass_is_not_shared_with_stochastic_layers(tiny_timm_config):
    cfg = dict(tiny_timm_config)
    cfg["model_kwargs"] = dict(cfg["model_kwargs"], drop_path_rate=0.1)
    objective = CounterfactualObjective(_backbone(cfg), masker=ObjectMasker(0.3))
    objective.train()
    assert not objective.can_share_relevance_pass()
    objective.eval()
    assert objective.can_share_relevance_pass()


def test_object_masker_uses_default_relevance(tiny_timm_config):
    objective = CounterfactualObjective(_backbone(tiny_timm_config), masker=ObjectMasker(0.3))
    assert type(objective.relevance).__name__ == "AttentionGradRelevance"
    assert isinstance(objective.refiller, SingleImageRefiller)
    x, y = _batch()
    grads_before = [p.grad for p in objective.student.parameters()]
    objective.train()
    cf, mask = objective.make_counterfactual(x, y)
    assert objective.student.training
    assert all(g is None for g in grads_before)
    assert all(p.grad is None for p in objective.student.parameters())
    changed = (cf.images != x).flatten(1).any(1)
    assert changed.shape == (4,)
    assert mask is not None and mask.shape == (4, 16) and mask.dtype == torch.bool
    # every masked patch was refilled from another image, unmasked ones kept
    patches = (cf.images != x).unflatten(2, (4, 8)).unflatten(4, (4, 8)).any(1).any(2).any(3)
    assert not (patches.flatten(1) & ~mask).any()


def test_relevance_from_the_teacher_builds_an_initial_teacher(tiny_timm_config):
    objective = CounterfactualObjective(
        _backbone(tiny_timm_config),
        masker=ObjectMasker(0.3),
        distillation=[],
        relevance_source="teacher",
    )
    assert list(objective.teachers) == ["initial"]
    assert not objective.can_share_relevance_pass()
    with pytest.raises(ValueError, match="relevance_source must be 'student' or 'teacher'"):
        CounterfactualObjective(_backbone(tiny_timm_config), relevance_source="model")  # type: ignore[arg-type]


def test_batch_of_one_with_donor_refiller_is_a_clear_error(tiny_timm_config):
    objective = CounterfactualObjective(
        _backbone(tiny_timm_config), masker=RandomMasker(0.5), refiller=SingleImageRefiller()
    )
    x, y = _batch(1)
    with pytest.raises(ValueError, match="at least 2 images per batch"):
        objective(x, y)


def test_wrong_image_size_is_a_clear_error(tiny_timm_config):
    objective = CounterfactualObjective(_backbone(tiny_timm_config), distillation=[])
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        objective(torch.rand(2, 3, 30, 30), torch.zeros(2, dtype=torch.long))


def test_teacher_from_checkpoint_for_wise_kd(tiny_timm_config, tmp_path):
    donor = _backbone(tiny_timm_config)
    _perturb(donor)
    path = tmp_path / "wise.pt"
    torch.save(donor.state_dict(), path)
    objective = CounterfactualObjective(
        _backbone(tiny_timm_config),
        masker=ParityMasker(),
        refiller=ConstantRefiller(0.0),
        distillation=[FeatureDistillationLoss(), LogitDistillationLoss(teacher=str(path))],
    )
    assert len(objective.teachers) == 2 and "initial" in objective.teachers
    wise_teacher = objective.teachers[teacher_key(str(path))]
    for k, v in donor.state_dict().items():
        torch.testing.assert_close(wise_teacher.state_dict()[k], v)
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found"):
        CounterfactualObjective(
            _backbone(tiny_timm_config), distillation=[LogitDistillationLoss(teacher=str(missing))]
        )


def _object_masks() -> tuple[Tensor, Tensor]:
    """Two 32x32 object masks and their exact 4x4-grid patch masks (8-px patches).

    Image 0: the object fills rows 0-15 and cols 0-11, so patches 0 and 4 are fully
    covered and patches 1 and 5 half covered (cols 8-11 of 8-15). Image 1: one
    full patch (rows 24-31, cols 24-31, patch 15) and a 3x3-pixel speck in patch 0
    (9/64 coverage).
    """
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :16, :12] = True
    masks[1, 24:, 24:] = True
    masks[1, 2:5, 2:5] = True
    expected = torch.zeros(2, 16, dtype=torch.bool)
    expected[0, [0, 1, 4, 5]] = True  # coverage 1, 0.5, 1, 0.5 >= 0.5
    expected[1, 15] = True
    return masks, expected


def test_segmentation_masker_replaces_exactly_the_covered_patches(tiny_timm_config):
    from cfmask.masking import SegmentationMasker

    images = _batch(2)[0] * 0.9 + 0.1  # no pixel is 0, the refill value
    targets = torch.tensor([0, 1])
    masks, expected = _object_masks()
    objective = CounterfactualObjective(
        _backbone(tiny_timm_config),
        masker=SegmentationMasker(min_coverage=0.5),
        refiller=ConstantRefiller(0.0),
    )
    assert objective.relevance is None  # no relevance map is built for exact masks
    out = objective(images, targets, object_masks=masks)
    assert out.mask is not None and torch.equal(out.mask, expected)
    assert out.counterfactual is not None
    changed = (out.counterfactual.images != images).any(dim=1)  # (B, H, W)
    by_hand = torch.zeros(2, 32, 32, dtype=torch.bool)
    for b in range(2):
        for p in expected[b].nonzero().flatten().tolist():
            r, c = divmod(p, 4)
            by_hand[b, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = True
    assert torch.equal(changed, by_hand)
    assert torch.isfinite(out.loss)

    float_masks = masks.float()  # soft/float masks give the same coverage
    _, mask = objective.make_counterfactual(images, targets, object_masks=float_masks)
    assert mask is not None and torch.equal(mask, expected)


def test_segmentation_masker_without_object_masks_names_the_fix(tiny_timm_config):
    from cfmask.masking import SegmentationMasker

    images, targets = _batch(2)
    objective = CounterfactualObjective(_backbone(tiny_timm_config), masker=SegmentationMasker())
    with pytest.raises(ValueError, match=r"\(images, targets, masks\)"):
        objective(images, targets)
    with pytest.raises(ValueError, match=r"shape \(B, H, W\) = \(2, 32, 32\)"):
        objective(images, targets, object_masks=torch.zeros(2, 16, 16, dtype=torch.bool))


def test_object_masks_are_ignored_by_maskers_that_do_not_need_them(tiny_timm_config):
    images, targets = _batch(4)
    objective = CounterfactualObjective(
        _backbone(tiny_timm_config), masker=ParityMasker(), refiller=ConstantRefiller(0.0)
    )
    masks = torch.ones(4, 32, 32, dtype=torch.bool)
    _, with_masks = objective.make_counterfactual(images, targets, object_masks=masks)
    _, without = objective.make_counterfactual(images, targets)
    assert with_masks is not None and without is not None
    assert torch.equal(with_masks, without)

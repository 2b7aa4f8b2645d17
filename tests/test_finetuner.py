from __future__ import annotations

import copy
import math
from typing import ClassVar

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cfmask.backbones.timm_vit import TimmViT
from cfmask.finetuner import CounterfactualFineTuner, warmup_cosine_factor
from cfmask.losses import FeatureDistillationLoss, LogitDistillationLoss
from cfmask.masking import Masker
from cfmask.masking.maskers import ObjectMasker, RandomMasker
from cfmask.masking.refillers import ConstantRefiller, MultiImageRefiller, SingleImageRefiller
from cfmask.synthetic import SyntheticDataModule


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


def _backbone(cfg: dict[str, object]) -> TimmViT:
    return TimmViT(**cfg)  # type: ignore[arg-type]


def _batch(n: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.arange(n) % classes


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_loss_matches_independent_recomputation(tiny_timm_config):
    model = CounterfactualFineTuner(
        _backbone(tiny_timm_config), masker=ParityMasker(), refiller=ConstantRefiller(0.0)
    )
    initial = copy.deepcopy(model.student).eval()
    _perturb(model.student)
    x, y = _batch()
    out = model.compute_losses(x, y)

    # x_cf by hand: zero every 8x8 patch whose (row + col) is even.
    x_cf = x.clone()
    for r in range(4):
        for c in range(4):
            if (r + c) % 2 == 0:
                x_cf[:, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = 0.0
    ce = F.cross_entropy(model.student(x), y)
    s = model.student.forward_features(x_cf)
    with torch.no_grad():
        t = initial.forward_features(x_cf)
    fd = 30.0 * ((s - t) ** 2).sum() / s.numel()
    torch.testing.assert_close(out["loss_ce"], ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_distill"], fd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], ce + fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masker", [None, ParityMasker()])
def test_fused_student_pass_matches_separate_passes(tiny_timm_config, masker):
    torch.manual_seed(0)
    base = CounterfactualFineTuner(
        _backbone(tiny_timm_config), masker=masker, refiller=ConstantRefiller(0.5)
    )
    _perturb(base.student)
    results = []
    for fuse in (True, False):
        model = copy.deepcopy(base)
        model.hparams["fuse_student_passes"] = fuse
        x, y = _batch()
        loss = model.compute_losses(x, y)["loss"]
        grads = torch.autograd.grad(loss, list(model.student.parameters()))
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)


def test_no_masker_distils_on_clean_images(tiny_timm_config):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config))
    teacher = copy.deepcopy(model.student).eval()
    _perturb(model.student)
    x, y = _batch()
    out = model.compute_losses(x, y)
    with torch.no_grad():
        expected = 30.0 * F.mse_loss(model.student.forward_features(x), teacher.forward_features(x))
    torch.testing.assert_close(out["loss_distill"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_vanilla_fine_tuning_has_no_teacher(tiny_timm_config):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), distillation=[])
    assert len(model.teachers) == 0
    x, y = _batch()
    out = model.compute_losses(x, y)
    assert out["loss_distill"].item() == 0.0
    torch.testing.assert_close(out["loss"], F.cross_entropy(model.student(x), y))


def test_kd_term_uses_temperature_on_logits(tiny_timm_config):
    model = CounterfactualFineTuner(
        _backbone(tiny_timm_config),
        distillation=[LogitDistillationLoss(weight=1.0, temperature=10.0)],
    )
    teacher = copy.deepcopy(model.student).eval()
    _perturb(model.student)
    x, y = _batch()
    out = model.compute_losses(x, y)
    s = model.student(x).detach() / 10.0
    t = teacher(x).detach() / 10.0
    p_t = t.softmax(-1)
    kl = (p_t * (p_t.log() - s.log_softmax(-1))).sum(-1).mean() * 100.0
    torch.testing.assert_close(out["loss_distill"].detach(), kl, rtol=1e-4, atol=1e-6)


def _fit(model: CounterfactualFineTuner, tmp_path, steps: int = 2, **trainer_kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=SyntheticDataModule(batch_size=4, train_size=16))
    return trainer


def test_teacher_stays_frozen_while_student_trains(tiny_timm_config, tmp_path):
    model = CounterfactualFineTuner(
        _backbone(tiny_timm_config), masker=RandomMasker(0.5), lr=1e-2, schedule="constant"
    )
    teacher_before = copy.deepcopy(model.teachers["initial"].state_dict())
    student_before = copy.deepcopy(model.student.state_dict())
    _fit(model, tmp_path, enable_checkpointing=False)
    teacher = model.teachers["initial"]
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k])
    changed = [
        k for k, v in model.student.state_dict().items() if not torch.equal(v, student_before[k])
    ]
    assert changed


def test_linear_probe_trains_only_the_head(tiny_timm_config, tmp_path):
    model = CounterfactualFineTuner(
        _backbone(tiny_timm_config), distillation=[], trainable="head", lr=1e-2, schedule="constant"
    )
    before = copy.deepcopy(model.student.state_dict())
    head_ids = {id(p) for p in model.student.head_parameters()}
    head_names = {n for n, p in model.student.named_parameters() if id(p) in head_ids}
    _fit(model, tmp_path, enable_checkpointing=False)
    for name, value in model.student.state_dict().items():
        if name in head_names:
            assert not torch.equal(value, before[name]), name
        else:
            torch.testing.assert_close(value, before[name], msg=name)


def test_checkpoint_round_trip_rebuilds_every_component(tiny_timm_config, tmp_path):
    model = CounterfactualFineTuner(
        _backbone(tiny_timm_config),
        masker=RandomMasker(ratio=0.25),
        refiller=MultiImageRefiller(),
        distillation=[FeatureDistillationLoss(weight=3.0), LogitDistillationLoss(weight=0.5)],
        lr=1e-3,
    )
    trainer = _fit(model, tmp_path)
    path = (
        trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    )
    assert path
    restored = CounterfactualFineTuner.load_from_checkpoint(path)  # weights_only=True default
    assert isinstance(restored.masker, RandomMasker) and restored.masker.ratio == 0.25
    assert isinstance(restored.refiller, MultiImageRefiller)
    assert [d.config() for d in restored.distillation] == [d.config() for d in model.distillation]
    assert restored.student.config() == model.student.config()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[k], v)


def test_python_and_default_hparams_are_plain_data(tiny_timm_config):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), masker=RandomMasker(0.5))
    assert model.hparams["masker"] == {
        "class_path": "cfmask.masking.maskers.RandomMasker",
        "init_args": {"ratio": 0.5, "exact_count": False},
    }
    assert model.hparams["refiller"]["class_path"] == "cfmask.masking.refillers.SingleImageRefiller"
    assert model.hparams["_instantiator"] == "lightning.pytorch.cli.instantiate_module"


def test_batch_of_one_with_donor_refiller_is_a_clear_error(tiny_timm_config):
    model = CounterfactualFineTuner(
        _backbone(tiny_timm_config), masker=RandomMasker(0.5), refiller=SingleImageRefiller()
    )
    x, y = _batch(1)
    with pytest.raises(ValueError, match="at least 2 images per batch"):
        model.compute_losses(x, y)


def test_wrong_image_size_is_a_clear_error(tiny_timm_config):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), distillation=[])
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        model.compute_losses(torch.rand(2, 3, 30, 30), torch.zeros(2, dtype=torch.long))


def test_checkpoint_from_another_backbone_is_refused(tiny_timm_config, tmp_path):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), distillation=[])
    path = tmp_path / "other.pt"
    torch.save(model.student.state_dict(), path)
    other = dict(tiny_timm_config, model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    with pytest.raises(ValueError, match="does not fit this backbone"):
        CounterfactualFineTuner(_backbone(other), init_weights=str(path))
    with pytest.raises(ValueError, match="trained with the backbone"):
        CounterfactualFineTuner(_backbone(other)).on_load_checkpoint(
            {"hyper_parameters": {"backbone": model.hparams["backbone"]}}
        )


def test_teacher_from_checkpoint_for_wise_kd(tiny_timm_config, tmp_path):
    donor = _backbone(tiny_timm_config)
    _perturb(donor)
    path = tmp_path / "wise.pt"
    torch.save(donor.state_dict(), path)
    model = CounterfactualFineTuner(
        _backbone(tiny_timm_config),
        masker=ParityMasker(),
        refiller=ConstantRefiller(0.0),
        distillation=[FeatureDistillationLoss(), LogitDistillationLoss(teacher=str(path))],
    )
    assert len(model.teachers) == 2 and "initial" in model.teachers
    wise_teacher = model.teachers[next(k for k in model.teachers if k != "initial")]
    for k, v in donor.state_dict().items():
        torch.testing.assert_close(wise_teacher.state_dict()[k], v)
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found"):
        CounterfactualFineTuner(
            _backbone(tiny_timm_config), distillation=[LogitDistillationLoss(teacher=str(missing))]
        )


def test_schedules():
    assert warmup_cosine_factor(0, 500, 1000) == pytest.approx(1 / 500)
    assert warmup_cosine_factor(499, 500, 1000) == pytest.approx(1.0)
    assert warmup_cosine_factor(750, 500, 1000) == pytest.approx(0.5)
    assert warmup_cosine_factor(1000, 500, 1000) == pytest.approx(0.0)
    assert warmup_cosine_factor(600, 500, 1000) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.2))
    )


def test_onecycle_cycles_beta1_like_the_reference(tiny_timm_config, tmp_path):
    model = CounterfactualFineTuner(
        _backbone(tiny_timm_config), distillation=[], schedule="onecycle", pct_start=0.25
    )
    trainer = _fit(model, tmp_path, steps=8, enable_checkpointing=False)
    opt = trainer.optimizers[0]
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert type(sched).__name__ == "OneCycleLR"
    assert 0.85 <= opt.param_groups[0]["betas"][0] <= 0.95


def test_test_loop_logs_each_set_and_ood_average(tiny_timm_config, tmp_path):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), distillation=[])
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    dm = SyntheticDataModule(batch_size=4, test_sets=["id", "noisy", "noisier"])
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert set(metrics) == {
        "test/id/acc1",
        "test/noisy/acc1",
        "test/noisier/acc1",
        "test/ood_avg/acc1",
    }
    assert metrics["test/ood_avg/acc1"] == pytest.approx(
        (metrics["test/noisy/acc1"] + metrics["test/noisier/acc1"]) / 2
    )
    # Independent recount for the first set.
    hits = total = 0
    with torch.no_grad():
        for x, y in dm.test_dataloader()[0]:
            hits += int((model(x).argmax(1) == y).sum())
            total += len(y)
    acc = hits / total
    assert metrics["test/id/acc1"] == pytest.approx(acc)


def test_object_masker_uses_default_relevance(tiny_timm_config):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), masker=ObjectMasker(0.3))
    x, y = _batch()
    grads_before = [p.grad for p in model.student.parameters()]
    model.train()
    cf = model.make_counterfactual(x, y)
    assert model.student.training
    assert all(g is None for g in grads_before)
    assert all(p.grad is None for p in model.student.parameters())
    changed = (cf.images != x).flatten(1).any(1)
    assert changed.shape == (4,)


@pytest.mark.parametrize("refiller", [SingleImageRefiller(allow_self=False), MultiImageRefiller()])
def test_shared_relevance_pass_matches_separate_passes(tiny_timm_config, refiller):
    base = CounterfactualFineTuner(
        _backbone(tiny_timm_config), masker=ObjectMasker(0.3), refiller=refiller
    )
    _perturb(base.student)
    base.train()
    x, y = _batch()
    results = []
    for share in (True, False):
        model = copy.deepcopy(base)
        model.hparams["share_relevance_pass"] = share
        assert model.can_share_relevance_pass() is share
        torch.manual_seed(7)  # same donors in both runs
        out = model.compute_losses(x, y)
        grads = torch.autograd.grad(out["loss"], list(model.student.parameters()))
        assert all(p.grad is None for p in model.student.parameters())
        results.append((out["loss"].detach(), out["loss_distill"].detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    for g0, g1 in zip(results[0][2], results[1][2], strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)


def test_relevance_pass_is_not_shared_with_stochastic_layers(tiny_timm_config):
    cfg = dict(tiny_timm_config)
    cfg["model_kwargs"] = dict(cfg["model_kwargs"], drop_path_rate=0.1)
    model = CounterfactualFineTuner(_backbone(cfg), masker=ObjectMasker(0.3))
    model.train()
    assert not model.can_share_relevance_pass()
    model.eval()
    assert model.can_share_relevance_pass()


def test_class_count_mismatch_with_the_datamodule_is_a_clear_error(tiny_timm_config, tmp_path):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), distillation=[])  # 3 classes
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="datamodule has 5 classes but the model's head has 3"):
        trainer.fit(model, datamodule=SyntheticDataModule(num_classes=5, batch_size=4))

from __future__ import annotations

import copy
import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor

from cfmask.data.synthetic import SyntheticDataModule
from cfmask.losses import FeatureDistillationLoss, LogitDistillationLoss
from cfmask.masking.maskers import ObjectMasker, RandomMasker
from cfmask.masking.refillers import MultiImageRefiller
from cfmask.testing import quiet_trainer, tiny_timm_args
from cfmask.training.finetuner import CounterfactualFineTuner, warmup_cosine_factor

from .helpers.model_inputs import fixed_batch as _batch
from .helpers.model_inputs import perturb as _perturb
from .helpers.model_inputs import tiny_backbone as _backbone


def _fit(model: CounterfactualFineTuner, tmp_path, steps: int = 2, **trainer_kwargs) -> pl.Trainer:
    trainer = quiet_trainer(tmp_path, max_steps=steps, **trainer_kwargs)
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


def test_objective_shares_the_modules_and_checkpoint_keys_keep_their_names(tiny_timm_config):
    model = CounterfactualFineTuner(
        _backbone(tiny_timm_config),
        masker=ObjectMasker(0.3),
        relevance_source="teacher",
        fuse_student_passes=False,
        share_relevance_pass=False,
    )
    for copy_ in (model, copy.deepcopy(model)):
        objective = copy_.objective
        assert objective.student is copy_.student and objective.teachers is copy_.teachers
        assert objective.distillation is copy_.distillation
        assert objective.masker is copy_.masker and objective.refiller is copy_.refiller
        assert objective.relevance is copy_.relevance
    objective = model.objective
    assert (objective.relevance_source, objective.fuse_student_passes) == ("teacher", False)
    assert objective.share_relevance_pass is False
    backbone_keys = set(model.student.state_dict())
    expected = {f"student.{k}" for k in backbone_keys} | {
        f"teachers.initial.{k}" for k in backbone_keys
    }
    assert set(model.state_dict()) == expected
    model.train()
    assert model.student.training and not model.teachers["initial"].training


def test_checkpoint_written_in_the_module_layout_loads(tiny_timm_config, tmp_path):
    # A checkpoint assembled by hand in the layout "student.*" / "teachers.initial.*".
    template = CounterfactualFineTuner(_backbone(tiny_timm_config), lr=1e-3)
    student, teacher = _backbone(tiny_timm_config), _backbone(tiny_timm_config)
    _perturb(student)
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state |= {f"teachers.initial.{k}": v for k, v in teacher.state_dict().items()}
    path = tmp_path / "layout.ckpt"
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": dict(template.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    restored = CounterfactualFineTuner.load_from_checkpoint(path)
    for k, v in student.state_dict().items():
        torch.testing.assert_close(restored.objective.student.state_dict()[k], v)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(restored.objective.teachers["initial"].state_dict()[k], v)


class _RecordMasks(pl.Callback):
    def __init__(self) -> None:
        self.masks: list[Tensor | None] = []

    def on_train_batch_end(  # type: ignore[override]
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.masks.append(outputs["mask"])


def test_training_step_hands_the_mask_to_callbacks_and_logs_its_fraction(
    tiny_timm_config, tmp_path
):
    record = _RecordMasks()
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), masker=RandomMasker(0.5))
    trainer = _fit(model, tmp_path, enable_checkpointing=False, callbacks=[record])
    assert len(record.masks) == 2
    last = record.masks[-1]
    assert last is not None and last.shape == (4, 16) and last.dtype == torch.bool
    logged = trainer.callback_metrics["train/mask_fraction"]
    assert float(logged) == pytest.approx(last.sum().item() / last.numel())

    record = _RecordMasks()
    fd = CounterfactualFineTuner(_backbone(tiny_timm_config))
    trainer = _fit(fd, tmp_path, enable_checkpointing=False, callbacks=[record])
    assert record.masks == [None, None]
    assert "train/mask_fraction" not in trainer.callback_metrics


def test_python_and_default_hparams_are_plain_data(tiny_timm_config):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), masker=RandomMasker(0.5))
    assert model.hparams["masker"] == {
        "class_path": "cfmask.masking.maskers.RandomMasker",
        "init_args": {"ratio": 0.5, "exact_count": False},
    }
    assert model.hparams["refiller"]["class_path"] == "cfmask.masking.refillers.SingleImageRefiller"
    assert model.hparams["_instantiator"] == "lightning.pytorch.cli.instantiate_module"


def test_checkpoint_from_another_backbone_is_refused(tiny_timm_config, tmp_path):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), distillation=[])
    path = tmp_path / "other.pt"
    torch.save(model.student.state_dict(), path)
    other = tiny_timm_args(depth=1)
    with pytest.raises(ValueError, match="does not fit this backbone"):
        CounterfactualFineTuner(_backbone(other), init_weights=str(path))
    with pytest.raises(ValueError, match="trained with the backbone"):
        CounterfactualFineTuner(_backbone(other)).on_load_checkpoint(
            {"hyper_parameters": {"backbone": model.hparams["backbone"]}}
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
    trainer = quiet_trainer(tmp_path)
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


def test_class_count_mismatch_with_the_datamodule_is_a_clear_error(tiny_timm_config, tmp_path):
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), distillation=[])  # 3 classes
    trainer = quiet_trainer(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="datamodule has 5 classes but the model's head has 3"):
        trainer.fit(model, datamodule=SyntheticDataModule(num_classes=5, batch_size=4))


def test_demo_mask_fraction_meter_reads_the_mask_from_the_step_outputs(tiny_timm_config, tmp_path):
    from cfmask.demo.runner import MaskFractionMeter

    fraction, record = MaskFractionMeter(), _RecordMasks()
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), masker=RandomMasker(0.5))
    _fit(model, tmp_path, enable_checkpointing=False, callbacks=[fraction, record])
    expected = [m.float().mean().item() for m in record.masks if m is not None]
    assert len(expected) == 2
    assert fraction.mean == pytest.approx(sum(expected) / 2)


def test_training_step_passes_the_batch_object_masks_to_a_segmentation_masker(
    tiny_timm_config, tmp_path
):
    from torch.utils.data import DataLoader, TensorDataset

    from cfmask.masking import SegmentationMasker

    images, targets = _batch(4)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True  # exactly patches (1,1), (1,2), (2,1), (2,2) of the 4x4 grid
    expected = torch.zeros(4, 16, dtype=torch.bool)
    expected[:, [5, 6, 9, 10]] = True
    loader = DataLoader(TensorDataset(images, targets, masks), batch_size=4)
    record = _RecordMasks()
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), masker=SegmentationMasker())
    trainer = quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False, callbacks=[record])
    trainer.fit(model, train_dataloaders=loader)
    assert len(record.masks) == 1 and torch.equal(record.masks[0], expected)

    two_element = DataLoader(TensorDataset(images, targets), batch_size=4)
    model = CounterfactualFineTuner(_backbone(tiny_timm_config), masker=SegmentationMasker())
    with pytest.raises(ValueError, match=r"\(images, targets, masks\)"):
        quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False).fit(
            model, train_dataloaders=two_element
        )

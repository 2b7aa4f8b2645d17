"""cfmask.training.head_setup: deferred zero-shot heads for an objective, no LightningModule."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from cfmask.backbones import OpenCLIPViT, TimmViT
from cfmask.losses import FeatureDistillationLoss
from cfmask.training.head_setup import build_deferred_heads, datamodule_class_names
from cfmask.training.objective import CounterfactualObjective


def _fake_trainer(rank: int, received: torch.Tensor | None, sent: list[Any]) -> Any:
    def broadcast(obj: Any, src: int = 0) -> Any:
        sent.append(obj)
        return received if rank else obj

    strategy = SimpleNamespace(root_device=torch.device("cpu"), broadcast=broadcast)
    return SimpleNamespace(is_global_zero=rank == 0, strategy=strategy)


def _deferred(clip_args: dict[str, Any]) -> OpenCLIPViT:
    return OpenCLIPViT(**{**clip_args, "class_names": "datamodule"})


def test_rank_zero_builds_the_head_for_student_and_teachers(clip_args: dict[str, Any]) -> None:
    student = _deferred(clip_args)
    objective = CounterfactualObjective(student, distillation=[FeatureDistillationLoss()])
    names = ["cat", "dog", "fox"]
    expected = copy.deepcopy(student).zero_shot_weight(names)
    sent: list[Any] = []
    dm = SimpleNamespace(class_names=names)
    assert build_deferred_heads(objective, dm, _fake_trainer(0, None, sent), None) is True
    assert [tuple(w.shape) for w in sent] == [(3, 32)]
    torch.testing.assert_close(student.head.weight, expected)
    teacher = objective.teachers["initial"]
    torch.testing.assert_close(teacher.head.weight, expected)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert student.class_names == names and not student.needs_class_names


def test_other_ranks_take_the_broadcast_weight(clip_args: dict[str, Any]) -> None:
    objective = CounterfactualObjective(_deferred(clip_args))
    received = torch.randn(2, 32)
    sent: list[Any] = []
    dm = SimpleNamespace(class_names=["cat", "dog"])
    build_deferred_heads(objective, dm, _fake_trainer(1, received, sent), None)
    assert sent == [None]  # rank 1 never encoded text
    torch.testing.assert_close(objective.student.head.weight, received)


def test_a_ready_head_is_left_alone(tiny_timm_config: dict[str, Any]) -> None:
    objective = CounterfactualObjective(TimmViT(**tiny_timm_config))
    trainer: Any = SimpleNamespace()  # never consulted
    assert build_deferred_heads(objective, None, trainer, None) is False


@pytest.mark.parametrize("datamodule", [None, SimpleNamespace(class_names=[])])
def test_a_datamodule_without_class_names_is_named_in_the_error(datamodule: Any) -> None:
    with pytest.raises(ValueError, match=rf"{type(datamodule).__name__} has no class_names"):
        datamodule_class_names(datamodule)


def test_class_names_become_strings() -> None:
    assert datamodule_class_names(SimpleNamespace(class_names=("a", 1))) == ["a", "1"]

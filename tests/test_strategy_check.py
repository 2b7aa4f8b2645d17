"""Sharded strategies (FSDP, DeepSpeed, model parallel) are refused at setup, naming DDP.

The installed Lightning refuses FSDP on a CPU accelerator, so a sharded fit cannot run
here; the fine-tuner stops such a fit before it starts instead of running the frozen
teacher and the relevance gradient under sharding unverified.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
)

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.testing import tiny_timm_args
from cfmask.training.recipe_checks import check_supported_strategy


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy])
def test_sharded_strategies_are_refused_with_the_strategy_to_use(strategy: type) -> None:
    instance = strategy.__new__(strategy)  # no process group or deepspeed install needed
    with pytest.raises(ValueError, match=r"shards the model.*--trainer.strategy ddp"):
        check_supported_strategy(instance)


def test_ddp_and_single_device_are_accepted() -> None:
    check_supported_strategy(DDPStrategy())
    check_supported_strategy(SingleDeviceStrategy(torch.device("cpu")))


def test_setup_refuses_fsdp_before_anything_else() -> None:
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_args()), distillation=[])
    model._trainer = SimpleNamespace(strategy=FSDPStrategy(), datamodule=None)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="FSDPStrategy strategy shards the model"):
        model.setup("fit")

"""Every built-in component rebuilds from its configuration alone (checkpoint contract)."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.cli import instantiate_module

from cfmask import CounterfactualFineTuner
from cfmask.backbones import OpenCLIPViT, TimmViT
from cfmask.losses import FeatureDistillationLoss, LogitDistillationLoss
from cfmask.masking import (
    AttentionMaskRefiller,
    ConstantRefiller,
    ContextMasker,
    MultiImageRefiller,
    ObjectMasker,
    RandomMasker,
    SingleImageRefiller,
    TokenDropRefiller,
)
from cfmask.relevance import AttentionGradRelevance, AttentionRolloutRelevance
from cfmask.testing import check_component_config, quiet_trainer

COMPONENTS = [
    ObjectMasker(0.4),
    ContextMasker(0.6),
    RandomMasker(0.25, exact_count=True),
    SingleImageRefiller(allow_self=False),
    MultiImageRefiller(),
    TokenDropRefiller(),
    AttentionMaskRefiller(),
    ConstantRefiller(0.5),
    AttentionGradRelevance(),
    AttentionRolloutRelevance(),
    FeatureDistillationLoss(weight=3.0, inputs="clean"),
    LogitDistillationLoss(weight=1.0, temperature=4.0, teacher="wise.ckpt"),
]


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: type(c).__name__)
def test_component_config_round_trip(component):
    # check_component_config compares the configs; a checkpoint also needs the rebuilt
    # component to accept the original's state (same parameters and buffers).
    rebuilt = check_component_config(component)
    assert rebuilt is not component
    rebuilt.load_state_dict(component.state_dict(), strict=True)


@pytest.mark.parametrize("kind", ["timm", "open_clip"])
def test_backbone_rebuilt_from_config_gives_the_same_logits(kind, tiny_timm_config, clip_args):
    backbone = TimmViT(**tiny_timm_config) if kind == "timm" else OpenCLIPViT(**clip_args)
    rebuilt = check_component_config(backbone)
    rebuilt.load_state_dict(backbone.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), backbone.eval()(x))


def test_finetuner_hparams_rebuild_through_the_cli_instantiator(tiny_timm_config):
    model = CounterfactualFineTuner(
        TimmViT(**tiny_timm_config),
        masker=ContextMasker(0.5),
        refiller=MultiImageRefiller(),
        distillation=[FeatureDistillationLoss(weight=2.0)],
        schedule="onecycle",
    )
    hparams = copy.deepcopy(dict(model.hparams))  # the instantiator converts nested dicts in place
    hparams.pop("_instantiator")
    rebuilt = instantiate_module(CounterfactualFineTuner, hparams)
    assert dict(rebuilt.hparams) == dict(model.hparams)
    assert type(rebuilt.relevance) is AttentionGradRelevance
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_resuming_a_run_continues_it(tiny_timm_config, tmp_path):
    import lightning.pytorch as pl

    from cfmask.data.synthetic import SyntheticDataModule

    def trainer(steps: int) -> pl.Trainer:
        return quiet_trainer(tmp_path, max_steps=steps)

    dm = SyntheticDataModule(batch_size=4, train_size=8)
    first = trainer(2)
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config), masker=RandomMasker(0.5), lr=1e-3)
    first.fit(model, datamodule=dm)
    last = first.checkpoint_callback.last_model_path or sorted(tmp_path.rglob("*.ckpt"))[-1]
    resumed_model = CounterfactualFineTuner(
        TimmViT(**tiny_timm_config), masker=RandomMasker(0.5), lr=1e-3
    )
    second = trainer(4)
    second.fit(resumed_model, datamodule=dm, ckpt_path=str(last))
    assert second.global_step == 4
    sched = second.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 4  # the schedule continued, not restarted
    opt_state = second.optimizers[0].state
    assert all(int(s["step"]) == 4 for s in opt_state.values() if "step" in s)
    torch.testing.assert_close(
        resumed_model.teachers["initial"].state_dict()["model.head.weight"],
        model.teachers["initial"].state_dict()["model.head.weight"],
    )

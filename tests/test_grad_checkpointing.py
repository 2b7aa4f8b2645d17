"""Gradient checkpointing recomputes activations without changing the loss or the gradients.

Every method's loss and student gradients with checkpointing match those without it
within fp32 tolerance on the CPU; attention probes switch it off for their pass; and
a checkpoint written before the option existed still loads.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from cfmask.backbones.base import VisionBackbone
from cfmask.backbones.openclip_vit import OpenCLIPViT
from cfmask.backbones.timm_vit import TimmViT
from cfmask.masking.maskers import ObjectMasker, RandomMasker
from cfmask.masking.refillers import (
    AttentionMaskRefiller,
    SingleImageRefiller,
    TokenDropRefiller,
)
from cfmask.relevance.attention import AttentionGradRelevance
from cfmask.training.finetuner import CounterfactualFineTuner

from .helpers.model_inputs import (
    assert_same_loss_and_grads,
    fixed_batch,
    loss_and_grads,
    perturb,
    tiny_backbone,
    tiny_clip,
)


def _first_block(vit: VisionBackbone) -> torch.nn.Module:
    if isinstance(vit, TimmViT):
        block: torch.nn.Module = vit.model.blocks[0]
        return block
    assert isinstance(vit, OpenCLIPViT)
    resblock: torch.nn.Module = vit.visual.transformer.resblocks[0]
    return resblock


@pytest.mark.parametrize("kind", ["timm", "clip"])
@pytest.mark.parametrize(
    "method",
    ["vanilla", "object_single", "random_token_drop", "random_key_mask"],
)
def test_grad_checkpointing_gives_same_loss_and_grads(
    kind: str, method: str, tiny_timm_config: dict[str, Any], tmp_path: Path
) -> None:
    def build(checkpointing: bool) -> CounterfactualFineTuner:
        torch.manual_seed(0)
        vit: VisionBackbone
        if kind == "timm":
            vit = tiny_backbone(tiny_timm_config, grad_checkpointing=checkpointing)
        else:
            vit = tiny_clip(tmp_path, grad_checkpointing=checkpointing)
        kwargs: dict[str, Any] = {
            "vanilla": {"distillation": []},
            "object_single": {
                "masker": ObjectMasker(0.3),
                "refiller": SingleImageRefiller(allow_self=False),
            },
            "random_token_drop": {
                "masker": RandomMasker(0.5, exact_count=True),
                "refiller": TokenDropRefiller(),
            },
            "random_key_mask": {"masker": RandomMasker(0.5), "refiller": AttentionMaskRefiller()},
        }[method]
        model = CounterfactualFineTuner(vit, **kwargs)
        model.train()
        return model

    plain = build(False)
    perturb(plain.student, seed=5)
    ckpt = build(True)
    ckpt.student.load_state_dict(plain.student.state_dict())
    x, y = fixed_batch(seed=3)

    calls: list[bool] = []
    handle = _first_block(ckpt.student).register_forward_pre_hook(
        lambda *_: calls.append(torch.is_grad_enabled())
    )
    with_ckpt = loss_and_grads(ckpt, x, y)
    handle.remove()
    assert_same_loss_and_grads(loss_and_grads(plain, x, y), with_ckpt)
    assert ckpt.student.grad_checkpointing
    # the block ran again during the backward pass: activations were recomputed
    forwards = {"vanilla": 1, "object_single": 2, "random_token_drop": 2, "random_key_mask": 2}
    assert len(calls) > forwards[method]


@pytest.mark.parametrize("kind", ["timm", "clip"])
def test_attention_probes_switch_checkpointing_off(
    kind: str, tiny_timm_config: dict[str, Any], tmp_path: Path
) -> None:
    vit: TimmViT | OpenCLIPViT
    if kind == "timm":
        vit = tiny_backbone(tiny_timm_config, grad_checkpointing=True)
    else:
        vit = tiny_clip(tmp_path, grad_checkpointing=True)
    x, y = fixed_batch(seed=3)
    with vit.attention_probes() as probes:
        logits = vit(x)
        grads = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), probes)
        assert len(probes) == 2  # not recorded a second time by a recomputation
    assert all(g.shape == probes[0].shape for g in grads)
    flag = vit.model.grad_checkpointing if isinstance(vit, TimmViT) else None
    if isinstance(vit, OpenCLIPViT):
        flag = vit.visual.transformer.grad_checkpointing
    assert flag is True
    scores_ckpt = AttentionGradRelevance()(vit, x, y)
    plain = copy.deepcopy(vit)
    if isinstance(plain, TimmViT):
        plain.model.set_grad_checkpointing(False)
    else:
        plain.visual.set_grad_checkpointing(False)
    torch.testing.assert_close(scores_ckpt, AttentionGradRelevance()(plain, x, y))


def test_checkpoint_of_model_without_checkpointing_loads(tiny_timm_config: dict[str, Any]) -> None:
    model = CounterfactualFineTuner(tiny_backbone(tiny_timm_config), distillation=[])
    saved = copy.deepcopy(model.hparams["backbone"])
    del saved["init_args"]["grad_checkpointing"]  # a config written before the option
    other = CounterfactualFineTuner(
        tiny_backbone(tiny_timm_config, grad_checkpointing=True), distillation=[]
    )
    other.on_load_checkpoint({"hyper_parameters": {"backbone": saved}})
    assert other.student.grad_checkpointing
    # the same check refuses a config that differs in more than the memory option
    deeper = copy.deepcopy(saved)
    deeper["init_args"]["model_kwargs"]["depth"] = 3
    with pytest.raises(ValueError, match="trained with the backbone"):
        other.on_load_checkpoint({"hyper_parameters": {"backbone": deeper}})

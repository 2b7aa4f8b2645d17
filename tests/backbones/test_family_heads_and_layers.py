"""Zero-shot heads of timm-trunk open_clip models, and train-mode layers of the new families."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F

from cfmask.backbones import OpenCLIPViT, TimmViT
from cfmask.backbones.families import FAMILIES
from cfmask.backbones.openclip_vit import build_open_clip_model
from cfmask.masking import ObjectMasker, SingleImageRefiller
from cfmask.relevance import AttentionGradRelevance
from cfmask.testing import tiny_clip_args, tiny_timm_args
from cfmask.training.objective import CounterfactualObjective, has_stochastic_layers

NAMES = ["cat", "dog", "bird", "fish"]
TEMPLATE = "a photo of a {}."


def _family_cfg(key: str) -> dict[str, Any]:
    family = next(f for f in FAMILIES if f.key == key)
    return copy.deepcopy(family.tiny_args["model_cfg"])


@pytest.mark.parametrize("key", ["siglip", "eva_clip", "timm_trunk_named"])
def test_zero_shot_head_ranks_like_open_clip(key: str, tmp_path: Path) -> None:
    cfg = _family_cfg(key)
    torch.manual_seed(0)
    clip, _ = build_open_clip_model(f"tiny-{key}", None, cfg)
    with torch.no_grad():
        clip.logit_scale.fill_(2.0)  # exp(2) ~ 7.4, not the default, so the scale counts
    weights = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), weights)
    backbone = OpenCLIPViT(
        f"tiny-{key}",
        pretrained=str(weights),
        model_cfg=cfg,
        class_names=NAMES,
        templates=[TEMPLATE],
        text_cache_dir=str(tmp_path / "text"),
    ).eval()
    size = backbone.data_config.image_size
    images = torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(backbone.data_config.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.data_config.std).view(1, 3, 1, 1)
    tokens = open_clip.SimpleTokenizer(context_length=77)([TEMPLATE.format(n) for n in NAMES])
    clip.eval()
    with torch.no_grad():
        # open_clip's own zero-shot logits: scale * cos(image, text) (+ bias for SigLIP)
        image_logits, _ = clip.get_logits((images - mean) / std, tokens)
        ours = backbone(images)
    if "init_logit_bias" in cfg:
        assert backbone.logit_bias == pytest.approx(cfg["init_logit_bias"])
    torch.testing.assert_close(ours, image_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.argsort(dim=1), image_logits.argsort(dim=1))


def test_siglip_head_keeps_bias_when_built_from_datamodule_names(tmp_path: Path) -> None:
    args: dict[str, Any] = {"model_cfg": _family_cfg("siglip")}
    backbone = OpenCLIPViT("tiny-siglip", class_names="datamodule", templates=[TEMPLATE], **args)
    weight = F.normalize(torch.randn(len(NAMES), backbone.feature_dim), dim=-1)
    backbone.set_class_names(NAMES, weight=weight * backbone.logit_scale)
    torch.testing.assert_close(backbone.head.bias.data, torch.full((4,), -10.0))


def test_patch_dropout_counts_as_a_train_mode_layer(tmp_path: Path) -> None:
    plain = TimmViT(**tiny_timm_args())
    assert not has_stochastic_layers(plain)
    timm_drop = TimmViT(**tiny_timm_args(patch_drop_rate=0.25))
    assert has_stochastic_layers(timm_drop)
    clip_drop = OpenCLIPViT(**tiny_clip_args(tmp_path, vision={"patch_dropout": 0.25}))
    assert has_stochastic_layers(clip_drop)
    trunk_cfg = _family_cfg("eva_clip")
    trunk_cfg["vision_cfg"]["patch_dropout"] = 0.25
    trunk_drop = OpenCLIPViT(
        "tiny-eva",
        model_cfg=trunk_cfg,
        class_names=NAMES,
        templates=[TEMPLATE],
        text_cache_dir=str(tmp_path),
    )
    assert has_stochastic_layers(trunk_drop)


def test_rotary_coordinate_augmentation_counts_as_a_train_mode_layer() -> None:
    args = tiny_timm_args()
    args["model_name"] = "vit_small_patch16_rope_224"
    assert not has_stochastic_layers(TimmViT(**args))
    args["model_kwargs"]["rope_shift_coords"] = 0.5
    rope = TimmViT(**args)
    assert any(getattr(m, "aug_active", False) for m in rope.modules())
    assert has_stochastic_layers(rope)


@pytest.mark.parametrize("library", ["timm", "open_clip"])
def test_patch_dropout_model_gets_separate_passes(library: str, tmp_path: Path) -> None:
    backbone = (
        TimmViT(**tiny_timm_args(patch_drop_rate=0.5))
        if library == "timm"
        else OpenCLIPViT(**tiny_clip_args(tmp_path, vision={"patch_dropout": 0.5}))
    )
    objective = CounterfactualObjective(
        backbone, ObjectMasker(0.3), SingleImageRefiller(), AttentionGradRelevance()
    ).train()
    assert not objective.can_share_relevance_pass()
    calls: list[str] = []
    relevance = objective.relevance
    assert relevance is not None
    original = relevance.forward_with_outputs

    def shared(*args: Any) -> Any:
        calls.append("shared")
        return original(*args)

    relevance.forward_with_outputs = shared  # type: ignore[method-assign]
    images = torch.rand(4, 3, 32, 32)
    result = objective(images, torch.tensor([0, 1, 2, 0]))
    result.loss.backward()
    assert calls == []  # relevance in eval mode on all tokens, a separate training pass
    assert result.mask is not None and result.mask.shape == (4, backbone.num_patches)

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import Tensor, nn

import cfmask.backbones.clip_text as clip_text
import cfmask.backbones.openclip_vit as oc
from cfmask.backbones import OpenCLIPViT, VisionBackbone
from cfmask.backbones.heads import ZeroShotHead, build_zero_shot_weights

from ..helpers.manual_vit import clip_feature as _manual_feature
from ..helpers.manual_vit import clip_tokens as _manual_tokens
from ..helpers.manual_vit import normalise as _normalise


def _images(b: int = 3) -> Tensor:
    return torch.rand(b, 3, 32, 32)


def _save_clip(cfg: dict[str, Any], path: Path, seed: int = 7) -> Any:
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**copy.deepcopy(cfg)).eval()
    torch.save(clip.state_dict(), path)
    return clip


def test_shapes_features_and_parameters(clip_args: dict[str, Any]) -> None:
    vit = OpenCLIPViT(**clip_args)
    assert isinstance(vit, VisionBackbone)
    x = _images()
    feats = vit.forward_features(x)
    assert feats.shape == (3, 32) and vit(x).shape == (3, 3)
    assert vit.grid_size == (4, 4) and vit.patch_size == 8 and vit.num_prefix_tokens == 1
    assert vit.feature_dim == 32 and vit.num_classes == 3 and vit.data_config.image_size == 32
    assert vit.data_config.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    # features are exactly what model.visual returns: ln_post(CLS) @ proj, un-normalised
    assert torch.allclose(feats, vit.visual(_normalise(vit, x)))
    assert torch.allclose(feats, _manual_feature(vit, _manual_tokens(vit, x)), atol=1e-5)
    # only the image tower and the head are parameters: the text tower was dropped
    prefixes = {name.split(".")[0] for name in vit.state_dict()}
    assert prefixes == {"visual", "head"}
    assert isinstance(vit.head, ZeroShotHead)
    assert vit.head_parameters() == list(vit.head.parameters())
    assert all(p.requires_grad for p in vit.head.parameters())
    assert torch.all(vit.head.bias == 0)


def test_head_equals_independent_recomputation(clip_args: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "clip.pt"
    clip = _save_clip(clip_args["model_cfg"], path)
    vit = OpenCLIPViT(**clip_args, pretrained=str(path))
    tok = open_clip.SimpleTokenizer(context_length=77)
    rows = []
    with torch.no_grad():
        for name in clip_args["class_names"]:
            prompts = [t.format(name) for t in clip_args["templates"]]
            emb = clip.encode_text(tok(prompts))  # full 77-token context
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            rows.append(mean / mean.norm())
    expected = 100.0 * torch.stack(rows)
    assert torch.allclose(vit.head.weight, expected, atol=1e-4)
    # local-file round trip of the image tower
    x = _images()
    with torch.no_grad():
        assert torch.allclose(
            vit.forward_features(x), clip.encode_image(_normalise(vit, x)), atol=1e-6
        )
        logits = F.normalize(clip.encode_image(_normalise(vit, x)), dim=-1) @ expected.T
    assert torch.allclose(vit(x), logits, atol=1e-4)


def test_truncated_text_path_equals_full(clip_args: dict[str, Any]) -> None:
    clip = open_clip.CLIP(**copy.deepcopy(clip_args["model_cfg"])).eval()
    tok = open_clip.SimpleTokenizer(context_length=77)
    tokens = tok(["a photo of a cat.", "a rather long drawing of a small bird in the sky."])
    with torch.no_grad():
        full = clip.encode_text(tokens)
        short = clip_text.encode_text_truncated(clip, tokens)
    assert torch.allclose(full, short, atol=2e-6)


def test_default_class_names_and_templates() -> None:
    templates = clip_text.default_templates()
    assert len(templates) == 80 and all("{}" in t for t in templates)
    assert templates[0].replace("{}", "cat") == open_clip.OPENAI_IMAGENET_TEMPLATES[0]("cat")


def test_text_cache_hit_skips_text_tower(
    clip_args: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clip.pt"
    _save_clip(clip_args["model_cfg"], path)
    first = OpenCLIPViT(**clip_args, pretrained=str(path))
    assert len(list(Path(clip_args["text_cache_dir"]).glob("*.pt"))) == 1

    def refuse(*args: Any, **kwargs: Any) -> Tensor:
        raise AssertionError("text tower ran although the cache holds these embeddings")

    monkeypatch.setattr(clip_text, "build_zero_shot_weights", refuse)
    second = OpenCLIPViT(**clip_args, pretrained=str(path))
    assert torch.equal(first.head.weight, second.head.weight)
    # other templates, other weights or other activation are other keys
    with pytest.raises(AssertionError, match="text tower ran"):
        OpenCLIPViT(**{**clip_args, "templates": ["a {}."]}, pretrained=str(path))
    with pytest.raises(AssertionError, match="text tower ran"):
        OpenCLIPViT(**clip_args)  # random weights, different digest
    cfg = {**clip_args["model_cfg"], "quick_gelu": True}
    with pytest.raises(AssertionError, match="text tower ran"):
        OpenCLIPViT(**{**clip_args, "model_cfg": cfg}, pretrained=str(path))


def test_build_zero_shot_weights_rejects_bad_templates() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        build_zero_shot_weights(lambda t: t.float(), lambda s: torch.zeros(len(s), 2), ["a"], ["x"])


def test_local_file_round_trip_and_missing_file(clip_args: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "clip.pt"
    _save_clip(clip_args["model_cfg"], path)
    torch.manual_seed(1)
    a = OpenCLIPViT(**clip_args, pretrained=str(path))
    torch.manual_seed(2)
    b = OpenCLIPViT(**clip_args, pretrained=str(path))
    x = _images()
    assert torch.allclose(a(x), b(x))
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        OpenCLIPViT(**clip_args, pretrained=str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="local checkpoint"):
        OpenCLIPViT(**clip_args, pretrained="laion2b_s34b_b79k")


def _activations(vit: OpenCLIPViT) -> set[type]:
    return {type(blk.mlp.gelu) for blk in vit.visual.transformer.resblocks}


def test_quick_gelu_forced_for_openai_weights(
    clip_args: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tiny_openai.pt"
    _save_clip(clip_args["model_cfg"], path)
    with caplog.at_level(logging.WARNING):
        vit = OpenCLIPViT(**clip_args, pretrained=str(path))
    assert _activations(vit) == {QuickGELU}
    assert "forcing quick_gelu=True" in caplog.text
    plain = tmp_path / "tiny.pt"
    _save_clip(clip_args["model_cfg"], plain)
    assert _activations(OpenCLIPViT(**clip_args, pretrained=str(plain))) == {nn.GELU}
    explicit = {**clip_args["model_cfg"], "quick_gelu": False}
    with pytest.raises(ValueError, match="QuickGELU"):
        OpenCLIPViT(**{**clip_args, "model_cfg": explicit}, pretrained=str(path))


def test_quick_gelu_decision_for_named_models() -> None:
    assert oc._force_quick_gelu("ViT-B-32", "openai", None) is True
    assert oc._force_quick_gelu("ViT-B-32-quickgelu", "openai", None) is False
    assert oc._force_quick_gelu("ViT-B-32", "laion2b_s34b_b79k", None) is False
    assert oc._force_quick_gelu("ViT-B-32", None, None) is False


def test_probes_match_manual_attention(clip_args: dict[str, Any]) -> None:
    vit = OpenCLIPViT(**clip_args)
    x = _images(2)
    with vit.attention_probes() as probes:
        vit(x)
    tokens = _manual_tokens(vit, x)
    blk = vit.visual.transformer.resblocks[0]
    h = blk.attn.num_heads
    q, k, _ = F.linear(blk.ln_1(tokens), blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(
        3, -1
    )
    hd = q.shape[-1] // h
    q = q.view(2, 17, h, hd).transpose(1, 2)
    k = k.view(2, 17, h, hd).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5, dim=-1)
    assert torch.allclose(probes[0], expected, atol=1e-5)


def test_init_args_round_trip(clip_args: dict[str, Any]) -> None:
    vit = OpenCLIPViT(**clip_args)
    args = vit.config()["init_args"]
    assert args == {**clip_args, "pretrained": None}
    rebuilt = OpenCLIPViT(**args)
    rebuilt.load_state_dict(vit.state_dict())
    x = _images()
    assert torch.allclose(rebuilt(x), vit(x))

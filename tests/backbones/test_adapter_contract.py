"""The contract every :class:`~cfmask.backbones.VisionBackbone` adapter keeps, run over both.

Each adapter is described once by a :class:`AdapterCase` (how to build a tiny one, its
stem and encoder written out by hand from the wrapped library's modules, and what
"attention capture is active" looks like inside it); every test below runs for each
case. Adapter-specific behaviour (timm's register tokens and local-weight formats,
open_clip's zero-shot head, text cache and QuickGELU rule) stays in
``test_backbone_timm.py`` and ``test_backbone_openclip.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from cfmask.backbones import AttentionCaptureError, OpenCLIPViT, TimmViT, VisionBackbone

from ..helpers.manual_vit import clip_feature, clip_tokens, timm_feature, timm_tokens


@dataclass(frozen=True)
class AdapterCase:
    """How the contract tests build and look inside one adapter."""

    build: Callable[[dict[str, Any], dict[str, Any]], VisionBackbone]
    #: Patch tokens + prefix + position embedding + pre-norm, from the library's modules.
    manual_tokens: Callable[[Any, Tensor], Tensor]
    #: The encoder applied to a token sequence, giving the feature vector.
    manual_feature: Callable[[Any, Tensor], Tensor]
    #: The attention modules of every block.
    blocks: Callable[[Any], list[nn.Module]]
    #: Whether block ``blk`` is currently patched for attention capture.
    patched: Callable[[nn.Module], bool]
    #: Replace block ``i``'s attention with a module the adapter cannot capture.
    break_block: Callable[[Any, int], None]
    feature_dim: int
    num_classes: int


def _timm_patched(attn: nn.Module) -> bool:
    hooked = bool(attn.attn_drop._forward_hooks)
    assert hooked == (not attn.fused_attn), "fused flag and capture hook disagree"
    return hooked


def _timm_break(vit: Any, i: int) -> None:
    vit.model.blocks[i].attn = _OpaqueAttention(vit.feature_dim)


def _clip_break(vit: Any, i: int) -> None:
    width = vit.visual.conv1.out_channels
    vit.visual.transformer.resblocks[i].attn = nn.Linear(width, width)


class _OpaqueAttention(nn.Module):
    """An attention block that exposes no attention probabilities."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        return self.proj(x)


CASES = {
    "timm": AdapterCase(
        build=lambda timm_args, clip_args: TimmViT(**timm_args),
        manual_tokens=timm_tokens,
        manual_feature=timm_feature,
        blocks=lambda vit: [blk.attn for blk in vit.model.blocks],
        patched=_timm_patched,
        break_block=_timm_break,
        feature_dim=64,
        num_classes=10,
    ),
    "open_clip": AdapterCase(
        build=lambda timm_args, clip_args: OpenCLIPViT(**clip_args),
        manual_tokens=clip_tokens,
        manual_feature=clip_feature,
        blocks=lambda vit: list(vit.visual.transformer.resblocks),
        patched=lambda blk: "attention" in blk.__dict__,
        break_block=_clip_break,
        feature_dim=32,
        num_classes=3,
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> AdapterCase:
    return CASES[request.param]


@pytest.fixture
def vit(case: AdapterCase, timm_args: dict[str, Any], clip_args: dict[str, Any]) -> Any:
    return case.build(timm_args, clip_args).eval()


def _images(b: int = 3) -> Tensor:
    return torch.rand(b, 3, 32, 32)


def test_shapes_properties_and_features(case: AdapterCase, vit: Any) -> None:
    assert isinstance(vit, VisionBackbone)
    x = _images()
    feats = vit.forward_features(x)
    assert feats.shape == (3, case.feature_dim) and vit(x).shape == (3, case.num_classes)
    assert vit.grid_size == (4, 4) and vit.num_patches == 16 and vit.patch_size == 8
    assert vit.num_prefix_tokens == 1 and vit.feature_dim == case.feature_dim
    assert vit.num_classes == case.num_classes and vit.data_config.image_size == 32
    # features = the encoder written out by hand, pixel normalisation inside the module
    expected = case.manual_feature(vit, case.manual_tokens(vit, x))
    assert torch.allclose(feats, expected, atol=1e-5)
    head_ids = {id(p) for p in vit.head_parameters()}
    assert head_ids and head_ids < {id(p) for p in vit.parameters()}


def test_init_args_round_trip(vit: Any) -> None:
    args = vit.config()["init_args"]
    params = inspect.signature(type(vit).__init__).parameters
    left_out = set(params) - {"self"} - set(args)
    assert set(args) <= set(params) and all(
        params[k].default is not params[k].empty for k in left_out
    )
    rebuilt = type(vit)(**args).eval()
    rebuilt.load_state_dict(vit.state_dict())
    x = _images()
    assert torch.allclose(rebuilt(x), vit(x))


def test_probes_capture_and_restore(case: AdapterCase, vit: Any) -> None:
    x = _images()
    plain = vit(x)
    blocks = case.blocks(vit)
    assert not any(case.patched(b) for b in blocks)
    with vit.attention_probes() as probes:
        assert all(case.patched(b) for b in blocks)
        probed = vit(x)
    assert torch.allclose(plain, probed, atol=1e-5)
    assert [tuple(p.shape) for p in probes] == [(3, 2, 17, 17)] * 2
    for p in probes:  # rows are probability distributions over the keys
        assert torch.allclose(p.sum(-1), torch.ones(3, 2, 17), atol=1e-5)
    grads = torch.autograd.grad(probed[:, 0].sum(), probes)
    assert all(g.shape == p.shape and g.abs().sum() > 0 for g, p in zip(grads, probes, strict=True))
    assert not any(case.patched(b) for b in blocks)
    vit(x)  # outside the context nothing is captured any more
    assert len(probes) == 2


def test_probes_restore_after_an_error_inside(case: AdapterCase, vit: Any) -> None:
    blocks = case.blocks(vit)
    with pytest.raises(RuntimeError, match="boom"), vit.attention_probes():
        assert all(case.patched(b) for b in blocks)  # the error below leaves a patched model
        raise RuntimeError("boom")
    assert not any(case.patched(b) for b in blocks)
    with vit.attention_probes() as probes:  # usable again
        vit(_images(1))
    assert len(probes) == 2


def test_nested_probes_rejected(case: AdapterCase, vit: Any) -> None:
    with vit.attention_probes():
        with pytest.raises(AttentionCaptureError, match="already active"), vit.attention_probes():
            pass
        assert all(case.patched(b) for b in case.blocks(vit))  # the outer capture survives
    assert not any(case.patched(b) for b in case.blocks(vit))


def test_attention_capture_error_names_the_block(case: AdapterCase, vit: Any) -> None:
    case.break_block(vit, 1)
    with pytest.raises(AttentionCaptureError, match="block 1"), vit.attention_probes():
        pass
    assert not case.patched(case.blocks(vit)[0])


def test_keep_index_equals_short_sequence(case: AdapterCase, vit: Any) -> None:
    x = _images()
    keep = torch.stack([torch.randperm(16)[:5] for _ in range(3)])
    out = vit.forward_features(x, keep_index=keep)
    tokens = case.manual_tokens(vit, x)
    for i in range(3):
        short = torch.cat([tokens[i : i + 1, :1], tokens[i : i + 1, 1 + keep[i]]], dim=1)
        assert torch.allclose(out[i], case.manual_feature(vit, short)[0], atol=1e-5)
    with vit.attention_probes() as probes:
        assert torch.allclose(out, vit.forward_features(x, keep_index=keep), atol=1e-5)
    assert probes[0].shape[-1] == 1 + 5


def test_key_mask_equals_dropping_for_cls(case: AdapterCase, vit: Any) -> None:
    x = _images()
    mask = torch.rand(3, 16) < 0.5
    mask[0] = False  # nothing hidden
    mask[2, 1:] = True  # all but one hidden
    out = vit.forward_features(x, key_mask=mask)
    tokens = case.manual_tokens(vit, x)
    for i in range(3):
        kept = (~mask[i]).nonzero().flatten()
        short = torch.cat([tokens[i : i + 1, :1], tokens[i : i + 1, 1 + kept]], dim=1)
        assert torch.allclose(out[i], case.manual_feature(vit, short)[0], atol=1e-5)
    assert torch.allclose(out[0], vit.forward_features(x[:1])[0], atol=1e-5)
    with vit.attention_probes() as probes:
        assert torch.allclose(out, vit.forward_features(x, key_mask=mask), atol=1e-5)
    assert torch.all(probes[1][2, :, :, 2:] == 0)  # hidden keys get no attention
    keep = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 5, 9]])
    both = vit.forward_features(x, keep_index=keep, key_mask=mask)
    for i in range(3):
        kept = keep[i][~mask[i, keep[i]]]
        alone = vit.forward_features(x[i : i + 1], keep_index=kept[None])
        assert torch.allclose(both[i], alone[0], atol=1e-5)


def test_missing_local_weights_file_is_named(
    case: AdapterCase, timm_args: dict[str, Any], clip_args: dict[str, Any], tmp_path: Path
) -> None:
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        case.build({**timm_args, "pretrained": missing}, {**clip_args, "pretrained": missing})

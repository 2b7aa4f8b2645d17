from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from cfmask.backbones import TimmViT, VisionBackbone

from ..helpers.manual_vit import timm_feature as _manual_cls
from ..helpers.manual_vit import timm_tokens as _manual_tokens


def _images(b: int = 3) -> Tensor:
    return torch.rand(b, 3, 32, 32)


def test_shapes_and_properties(timm_args: dict[str, Any]) -> None:
    vit = TimmViT(**timm_args)
    assert isinstance(vit, VisionBackbone)
    x = _images()
    assert vit.forward_features(x).shape == (3, 64)
    assert vit(x).shape == (3, 10)
    assert vit.grid_size == (4, 4) and vit.num_patches == 16 and vit.patch_size == 8
    assert vit.num_prefix_tokens == 1 and vit.feature_dim == 64 and vit.num_classes == 10
    assert vit.data_config.image_size == 32
    assert {id(p) for p in vit.head_parameters()} == {id(p) for p in vit.model.head.parameters()}
    # features = CLS after the final norm, with the pixel normalisation inside the module
    assert torch.allclose(
        vit.forward_features(x), _manual_cls(vit, _manual_tokens(vit, x)), atol=1e-5
    )
    assert torch.allclose(vit(x), vit.model.head(vit.forward_features(x)))


def test_init_args_round_trip(timm_args: dict[str, Any]) -> None:
    vit = TimmViT(**timm_args, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    args = vit.config()["init_args"]
    assert set(args) == set(inspect.signature(TimmViT.__init__).parameters) - {"self"}
    assert args["num_classes"] == 10 and args["patch_size"] == 8 and args["mean"] == [0.5] * 3
    rebuilt = TimmViT(**args)
    rebuilt.load_state_dict(vit.state_dict())
    x = _images()
    assert torch.allclose(rebuilt(x), vit(x))
    assert torch.allclose(vit.mean_buffer.flatten(), torch.full((3,), 0.5))


def test_non_vit_rejected() -> None:
    with pytest.raises(TypeError, match="VisionTransformer"):
        TimmViT("resnet18", num_classes=2)


def test_keep_index_equals_short_sequence_with_registers(timm_args: dict[str, Any]) -> None:
    """Register tokens are prefix tokens: kept whatever the index (CLS alone: contract tests)."""
    timm_args["model_kwargs"]["reg_tokens"] = 2
    vit = TimmViT(**timm_args).eval()
    p = vit.num_prefix_tokens
    x = _images()
    keep = torch.stack([torch.randperm(16)[:6] for _ in range(3)])
    out = vit.forward_features(x, keep_index=keep)
    tokens = _manual_tokens(vit, x)
    for i in range(3):
        short = torch.cat([tokens[i : i + 1, :p], tokens[i : i + 1, p + keep[i]]], dim=1)
        assert torch.allclose(out[i], _manual_cls(vit, short)[0], atol=1e-5)
    with vit.attention_probes() as probes:
        probed = vit.forward_features(x, keep_index=keep)
    assert torch.allclose(out, probed, atol=1e-5)
    assert probes[0].shape[-1] == p + 6


def test_key_mask_equals_dropping_with_registers(timm_args: dict[str, Any]) -> None:
    """Register tokens are never masked (CLS alone: contract tests)."""
    timm_args["model_kwargs"]["reg_tokens"] = 2
    vit = TimmViT(**timm_args).eval()
    p = vit.num_prefix_tokens
    x = _images()
    mask = torch.rand(3, 16) < 0.5
    mask[0] = False  # nothing hidden
    mask[1, :15] = True  # all but one hidden
    out = vit.forward_features(x, key_mask=mask)
    tokens = _manual_tokens(vit, x)
    for i in range(3):
        kept = (~mask[i]).nonzero().flatten()
        short = torch.cat([tokens[i : i + 1, :p], tokens[i : i + 1, p + kept]], dim=1)
        assert torch.allclose(out[i], _manual_cls(vit, short)[0], atol=1e-5)
    assert torch.allclose(out[0], vit.forward_features(x[:1])[0], atol=1e-5)
    with vit.attention_probes() as probes:
        probed = vit.forward_features(x, key_mask=mask)
    assert torch.allclose(out, probed, atol=1e-5)
    hidden_cols = probes[0][1, :, :, p : p + 15]
    assert torch.all(hidden_cols == 0)


def test_keep_index_and_key_mask_together(timm_args: dict[str, Any]) -> None:
    vit = TimmViT(**timm_args).eval()
    x = _images(2)
    keep = torch.tensor([[0, 3, 5, 9, 12], [1, 2, 3, 4, 15]])
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 3] = mask[1, 15] = mask[1, 7] = True  # patch 7 of image 1 is dropped anyway
    both = vit.forward_features(x, keep_index=keep, key_mask=mask)
    expected = vit.forward_features(x, keep_index=torch.tensor([[0, 5, 9, 12], [1, 2, 3, 4]]))
    assert torch.allclose(both, expected, atol=1e-5)


def test_bad_keep_index_and_key_mask(timm_args: dict[str, Any]) -> None:
    vit = TimmViT(**timm_args)
    x = _images(2)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        vit.forward_features(x, keep_index=torch.tensor([[0, 16], [1, 2]]))
    with pytest.raises(ValueError, match="bool"):
        vit.forward_features(x, key_mask=torch.zeros(2, 16))
    with pytest.raises(ValueError, match=r"\(2, 16\)"):
        vit.forward_features(x, key_mask=torch.zeros(2, 15, dtype=torch.bool))


@pytest.mark.parametrize("fmt", ["plain.pth", "wrapped.pt", "st.safetensors", "ddp.bin"])
def test_local_weights_round_trip(timm_args: dict[str, Any], tmp_path: Any, fmt: str) -> None:
    torch.manual_seed(1)
    source = TimmViT(**timm_args)
    state = source.model.state_dict()
    path = tmp_path / fmt
    if fmt.startswith("wrapped"):
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif fmt.startswith("st"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt.startswith("ddp"):
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    torch.manual_seed(2)
    loaded = TimmViT(**timm_args, pretrained=str(path))
    x = _images()
    assert torch.allclose(loaded(x), source(x), atol=1e-6)
    assert loaded.config()["init_args"]["pretrained"] == str(path)


def test_head_of_other_size_is_left_fresh(
    timm_args: dict[str, Any], tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    source = TimmViT(**timm_args)
    path = tmp_path / "w.pth"
    torch.save(source.model.state_dict(), path)
    timm_args["num_classes"] = 4
    with caplog.at_level(logging.WARNING):
        loaded = TimmViT(**timm_args, pretrained=str(path))
    assert "fresh head" in caplog.text
    x = _images()
    assert torch.allclose(loaded.forward_features(x), source.forward_features(x), atol=1e-6)
    assert loaded(x).shape == (3, 4)


def test_mismatched_weights_file(timm_args: dict[str, Any], tmp_path: Any) -> None:
    path = tmp_path / "w.pth"
    torch.save(TimmViT(**timm_args).model.state_dict(), path)
    timm_args["model_kwargs"]["depth"] = 3
    with pytest.raises(ValueError, match="missing"):
        TimmViT(**timm_args, pretrained=str(path))

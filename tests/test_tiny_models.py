"""The tiny models and quiet trainer of cfmask.testing, and the test configs that mirror them."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from cfmask.backbones import OpenCLIPViT, TimmViT
from cfmask.testing import (
    quiet_trainer_settings,
    tiny_clip_args,
    tiny_clip_config,
    tiny_timm_args,
)

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_timm_args_build_the_documented_model() -> None:
    vit = TimmViT(**tiny_timm_args())
    assert (vit.num_classes, vit.grid_size) == (3, (4, 4))
    # patch embedding, class token, 17 positions, 2 blocks, final norm, head (D = 32)
    d, hidden, tokens = 32, 4 * 32, 4 * 4 + 1
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    expected = (3 * 8 * 8 * d + d) + d + tokens * d + 2 * block + 2 * d + (d * 3 + 3)
    assert sum(p.numel() for p in vit.parameters()) == expected


def test_tiny_configs_are_fresh_copies() -> None:
    first = tiny_timm_args()
    first["model_kwargs"]["depth"] = 7
    assert tiny_timm_args()["model_kwargs"]["depth"] == 2
    clip = tiny_clip_config()
    clip["vision_cfg"]["layers"] = 7
    assert tiny_clip_config()["vision_cfg"]["layers"] == 2
    assert tiny_timm_args(10, depth=1, drop_rate=0.1)["model_kwargs"] == {
        "depth": 1,
        "embed_dim": 32,
        "num_heads": 2,
        "drop_rate": 0.1,
    }


def test_tiny_clip_config_overrides_and_logit_scale() -> None:
    cfg = tiny_clip_config(16, vision={"width": 32}, text={"heads": 1}, init_logit_scale=None)
    assert cfg["embed_dim"] == 16 and "init_logit_scale" not in cfg
    assert cfg["vision_cfg"] == {
        "image_size": 32,
        "patch_size": 8,
        "width": 32,
        "layers": 2,
        "head_width": 32,
    }
    assert cfg["text_cfg"]["heads"] == 1 and cfg["text_cfg"]["width"] == 32
    clip = open_clip.CLIP(**tiny_clip_config())
    assert float(clip.logit_scale.detach().exp()) == pytest.approx(100.0)
    default = open_clip.CLIP(**cfg)
    assert float(default.logit_scale.detach().exp()) == pytest.approx(1 / 0.07)


def test_tiny_clip_args_build_a_zero_shot_backbone(tmp_path: Path) -> None:
    vit = OpenCLIPViT(**tiny_clip_args(tmp_path))
    assert vit.num_classes == 3 and vit.grid_size == (4, 4)
    assert vit(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    deferred = tiny_clip_args(tmp_path, class_names="datamodule")
    assert deferred["class_names"] == "datamodule"
    assert OpenCLIPViT(**deferred).needs_class_names


def test_the_cli_test_config_uses_the_tiny_model_and_quiet_trainer() -> None:
    config = yaml.safe_load((ROOT / "tests" / "conf" / "tiny_fit.yaml").read_text())
    assert config["model"]["backbone"]["init_args"] == tiny_timm_args()
    quiet = quiet_trainer_settings("unused", max_steps=2)
    assert config["trainer"] == {k: v for k, v in quiet.items() if k != "default_root_dir"}

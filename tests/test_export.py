"""`cfmask export`: weights that open_clip and timm load themselves, with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cfmask import CounterfactualFineTuner
from cfmask.backbones import OpenCLIPViT, TimmViT
from cfmask.cli import main
from cfmask.weightspace.export import export_checkpoint


def _save(model: CounterfactualFineTuner, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def _perturb(model: CounterfactualFineTuner) -> None:
    """Stand-in for fine-tuning: every weight moves away from its initial value."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))


@pytest.fixture
def timm_ckpt(tmp_path, tiny_timm_config):
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config), distillation=[])
    _perturb(model)
    return model.eval(), _save(model, tmp_path / "timm-ft.ckpt")


@pytest.fixture
def clip_ckpt(tmp_path, clip_args):
    model = CounterfactualFineTuner(OpenCLIPViT(**clip_args), distillation=[])
    _perturb(model)
    return model.eval(), _save(model, tmp_path / "clip-ft.ckpt"), clip_args


def test_timm_round_trip_same_logits(timm_ckpt, tiny_timm_config):
    model, ckpt = timm_ckpt
    result = export_checkpoint(ckpt, "timm")
    assert result.weights == ckpt.with_name("timm-ft-timm.safetensors")
    cfg = tiny_timm_config
    k = cfg["num_classes"]
    loaded = timm.create_model(
        cfg["model_name"],
        pretrained=True,
        num_classes=k,
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        **cfg["model_kwargs"],
        pretrained_cfg_overlay=dict(file=str(result.weights), num_classes=k),
    ).eval()
    x = torch.rand(4, 3, 32, 32)
    mean = torch.tensor(loaded.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(loaded.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded((x - mean) / std), model(x), rtol=1e-5, atol=1e-5)
    assert "model_name" in result.load_snippet or "timm.create_model" in result.load_snippet


def test_open_clip_round_trip_same_logits(clip_ckpt, tmp_path):
    model, ckpt, args = clip_ckpt
    result = export_checkpoint(
        ckpt, "open_clip", tmp_path / "out" / "cfmask-export-tiny.safetensors"
    )
    assert result.head == tmp_path / "out" / "cfmask-export-tiny.head.safetensors"
    assert result.config == tmp_path / "out" / "cfmask-export-tiny.json"
    assert json.loads(result.config.read_text()) == args["model_cfg"]
    assert "open_clip.add_model_config" in result.load_snippet
    open_clip.add_model_config(result.config)  # registered under the file stem
    clip = open_clip.create_model("cfmask-export-tiny", pretrained=str(result.weights)).eval()
    head = load_file(str(result.head))
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        features = clip.encode_image((x - mean) / std)
        logits = F.normalize(features, dim=-1) @ head["weight"].T + head["bias"]
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)
    # the image tower is the fine-tuned one, not the rebuilt initial one
    fresh = open_clip.create_model("cfmask-export-tiny").visual.conv1.weight
    assert not torch.allclose(clip.visual.conv1.weight, fresh)


def test_safetensors_by_default_and_pt_on_request(timm_ckpt, tmp_path):
    _, ckpt = timm_ckpt
    st = export_checkpoint(ckpt, "timm").weights
    assert st.suffix == ".safetensors"
    assert st.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then JSON
    pt = export_checkpoint(ckpt, "timm", tmp_path / "w.pt").weights
    state = torch.load(pt, weights_only=True)
    assert set(state) == set(load_file(str(st)))
    for key, value in load_file(str(st)).items():
        torch.testing.assert_close(state[key], value)
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        export_checkpoint(ckpt, "timm", tmp_path / "w.bin", "safetensors")


def test_wrong_target_names_the_right_one(timm_ckpt):
    _, ckpt = timm_ckpt
    with pytest.raises(ValueError, match="export it with --to timm"):
        export_checkpoint(ckpt, "open_clip")
    with pytest.raises(ValueError, match="unknown export target"):
        export_checkpoint(ckpt, "onnx")  # type: ignore[arg-type]


def test_export_command(timm_ckpt, tmp_path, capsys):
    _, ckpt = timm_ckpt
    out = tmp_path / "cli.safetensors"
    assert main(["export", str(ckpt), "--to", "timm", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "pretrained_cfg_overlay" in printed
    assert set(load_file(str(out))) == set(
        k[len("student.model.") :]
        for k in torch.load(ckpt, weights_only=True)["state_dict"]
        if k.startswith("student.model.")
    )
    with pytest.raises(SystemExit) as info:
        main(["export", str(ckpt), "--to", "tensorflow"])
    assert info.value.code != 0

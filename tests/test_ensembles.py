"""WiSE-FT and soup files: validation before writing, distinct names, no random theta_0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.cli import main
from cfmask.weightspace.ensembles import (
    RandomInitError,
    alpha_label,
    check_alphas,
    soup_checkpoint,
    wise_checkpoints,
)

HEAD = "student.model.head.weight"


def _save(model: CounterfactualFineTuner, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def _finetuned(tmp_path: Path, tiny_timm_config, distillation=None, name="ft.ckpt") -> Path:
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config), distillation=distillation)
    with torch.no_grad():  # theta_1 != theta_0
        for p in model.student.parameters():
            p.add_(0.5)
    return _save(model, tmp_path / name)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_close_alphas_get_distinct_files_with_their_own_mixture(tmp_path, tiny_timm_config):
    ckpt = _finetuned(tmp_path, tiny_timm_config)
    paths = wise_checkpoints(ckpt, [0.12, 0.125], tmp_path / "wise")
    assert [p.name for p in paths] == ["wise_alpha0.12.ckpt", "wise_alpha0.125.ckpt"]
    state = _state(ckpt)
    w0, w1 = state["teachers.initial.model.head.weight"], state[HEAD]
    for alpha, path in zip((0.12, 0.125), paths, strict=True):
        torch.testing.assert_close(_state(path)[HEAD], w0 + alpha * (w1 - w0))


def test_alpha_labels_never_collide_and_read_back():
    alphas = [0.0, 0.1, 0.12, 0.125, 0.1250001, 1 / 3, 0.5, 1.0]
    labels = [alpha_label(a) for a in alphas]
    assert len(set(labels)) == len(alphas)
    assert [float(x) for x in labels] == alphas
    assert alpha_label(-0.0) == "0.00"


@pytest.mark.parametrize(
    ("alphas", "message"),
    [
        ([0.5, 1.5], r"alpha must be in \[0, 1\].*1.5"),
        ([0.5, float("nan")], r"alpha must be in \[0, 1\].*nan"),
        ([0.5, 0.50], "given twice"),
        ([], "at least one alpha"),
    ],
)
def test_bad_alphas_write_nothing(tmp_path, tiny_timm_config, alphas, message):
    ckpt = _finetuned(tmp_path, tiny_timm_config)
    with pytest.raises(ValueError, match=message):
        wise_checkpoints(ckpt, alphas, tmp_path / "wise")
    assert not (tmp_path / "wise").exists()


def test_check_alphas_rejects_non_numbers():
    with pytest.raises(ValueError, match="number"):
        check_alphas(["0.5"])  # type: ignore[list-item]


def test_cli_bad_alpha_is_an_error_before_any_file(tmp_path, tiny_timm_config, capsys):
    ckpt = _finetuned(tmp_path, tiny_timm_config)
    with pytest.raises(SystemExit) as info:
        main(["wise", str(ckpt), "--alpha", "0.5", "2", "--output", str(tmp_path / "w")])
    assert info.value.code != 0
    assert "alpha must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_random_init_run_without_stored_teacher_is_refused(tmp_path, tiny_timm_config):
    ckpt = _finetuned(tmp_path, tiny_timm_config, distillation=[])
    assert not any(k.startswith("teachers.") for k in _state(ckpt))
    with pytest.raises(RandomInitError, match=r"pretrained=False.*--zeroshot"):
        wise_checkpoints(ckpt, [0.5], tmp_path / "wise")
    assert not (tmp_path / "wise").exists()


def test_backbone_without_pretrained_argument_is_checked_by_two_seeded_builds(
    tmp_path, tiny_timm_config
):
    ckpt = _finetuned(tmp_path, tiny_timm_config, distillation=[])
    raw = torch.load(ckpt, weights_only=True)
    del raw["hyper_parameters"]["backbone"]["init_args"]["pretrained"]
    torch.save(raw, ckpt)
    with pytest.raises(RandomInitError, match="depend on the random seed"):
        wise_checkpoints(ckpt, [0.5], tmp_path / "wise")


def test_explicit_zeroshot_file_is_used_for_a_random_init_run(tmp_path, tiny_timm_config):
    zs_model = CounterfactualFineTuner(TimmViT(**tiny_timm_config), distillation=[])
    zeroshot = tmp_path / "zs.pt"
    torch.save(zs_model.student.state_dict(), zeroshot)
    ckpt = _finetuned(tmp_path, tiny_timm_config, distillation=[])
    (path,) = wise_checkpoints(ckpt, [0.25], tmp_path / "wise", zeroshot=zeroshot)
    w0 = zs_model.student.state_dict()["model.head.weight"]
    w1 = _state(ckpt)[HEAD]
    torch.testing.assert_close(_state(path)[HEAD], w0 + 0.25 * (w1 - w0))


def test_cli_random_init_run_names_the_zeroshot_option(tmp_path, tiny_timm_config, capsys):
    ckpt = _finetuned(tmp_path, tiny_timm_config, distillation=[])
    with pytest.raises(SystemExit) as info:
        main(["wise", str(ckpt), "--alpha", "0.5", "--output", str(tmp_path / "w")])
    assert info.value.code != 0
    assert "--zeroshot" in capsys.readouterr().err


def test_wise_output_never_replaces_the_input(tmp_path, tiny_timm_config):
    ckpt = _finetuned(tmp_path, tiny_timm_config, name="wise_alpha0.50.ckpt")
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="destroy that input"):
        wise_checkpoints(ckpt, [0.5], tmp_path)
    assert ckpt.read_bytes() == before


def test_soup_output_must_not_be_an_input(tmp_path, tiny_timm_config):
    a = _finetuned(tmp_path, tiny_timm_config, name="a.ckpt")
    b = _finetuned(tmp_path, tiny_timm_config, name="b.ckpt")
    before = b.read_bytes()
    with pytest.raises(ValueError, match="destroy that input"):
        soup_checkpoint([a, b], tmp_path / "." / "b.ckpt")
    assert b.read_bytes() == before
    out = soup_checkpoint([a, b], tmp_path / "soup.ckpt")
    torch.testing.assert_close(_state(out)[HEAD], 0.5 * (_state(a)[HEAD] + _state(b)[HEAD]))


def test_cli_soup_refuses_to_overwrite_an_input(tmp_path, tiny_timm_config, capsys):
    a = _finetuned(tmp_path, tiny_timm_config, name="a.ckpt")
    b = _finetuned(tmp_path, tiny_timm_config, name="b.ckpt")
    with pytest.raises(SystemExit) as info:
        main(["soup", str(a), str(b), "--output", str(a)])
    assert info.value.code != 0
    assert "destroy that input" in capsys.readouterr().err

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
import yaml

from cfmask.cli import main
from cfmask.cli import plugins as cli
from cfmask.training.finetuner import CounterfactualFineTuner

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "tiny_fit.yaml")
CONFIGS = ROOT / "examples" / "configs"


def _stacks() -> list[list[str]]:
    """Every example YAML, each stacked the way the README documents."""
    base = [
        str(CONFIGS / "backbone" / "openclip_vitb32.yaml"),
        str(CONFIGS / "data" / "imagenet_ood.yaml"),
        str(CONFIGS / "trainer" / "paper.yaml"),
    ]
    stacks = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        if path.parent.name == "smoke":
            stacks.append([str(path)])
        elif path.parent.name in ("method", "table1"):
            stacks.append([*base, str(path)])
        else:
            stacks.append([*base, str(path)] if str(path) not in base else base)
    return stacks


@pytest.mark.parametrize(
    "stack", _stacks(), ids=lambda s: Path(s[-1]).relative_to(CONFIGS).as_posix()
)
def test_every_example_config_parses(stack, capsys):
    args = ["fit"]
    for path in stack:
        args += ["-c", path]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"]["class_path"].startswith("cfmask.backbones.")


def test_fit_and_test_through_the_cli(tmp_path):
    main(["fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}"])
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    model = CounterfactualFineTuner.load_from_checkpoint(ckpts[0])
    assert type(model.masker).__name__ == "ObjectMasker" and model.masker.threshold == 0.3
    main(["test", "-c", TINY, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={ckpts[0]}"])
    assert any(tmp_path.rglob("results.json")) or (tmp_path / "results.json").exists()


def test_user_masker_plugin_by_class_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "plugin_masker"))
    main(
        [
            "fit",
            "-c",
            TINY,
            f"--trainer.default_root_dir={tmp_path}",
            "--model.masker=checkerboard_masker.CheckerboardMasker",
            "--model.masker.phase=1",
        ]
    )
    ckpt = sorted(tmp_path.rglob("*.ckpt"))[0]
    model = CounterfactualFineTuner.load_from_checkpoint(ckpt)
    assert type(model.masker).__name__ == "CheckerboardMasker" and model.masker.phase == 1


def test_entry_point_plugins_get_short_names(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "plugin_masker"))
    ep = EntryPoint(name="checkerboard", value="checkerboard_masker", group=cli.PLUGIN_GROUP)
    monkeypatch.setattr(
        cli, "entry_points", lambda group: [ep] if group == cli.PLUGIN_GROUP else []
    )
    assert cli.load_plugins() == ["checkerboard"]
    with pytest.raises(SystemExit):
        main(["fit", "-c", TINY, "--model.masker=CheckerboardMasker", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["masker"]["class_path"] == "checkerboard_masker.CheckerboardMasker"


def test_broken_plugin_warns_instead_of_crashing(monkeypatch):
    ep = EntryPoint(name="broken", value="no_such_module_xyz", group=cli.PLUGIN_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [ep])
    with pytest.warns(UserWarning, match="could not load cfmask plugin 'broken'"):
        assert cli.load_plugins() == []


def test_unknown_component_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", TINY, "--model.masker=NoSuchMasker", "--print_config"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "NoSuchMasker" in err


def test_bad_threshold_in_config_names_the_range(tmp_path):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\] \(inclusive\), got 1.5"):
        main(
            [
                "fit",
                "-c",
                TINY,
                f"--trainer.default_root_dir={tmp_path}",
                "--model.masker.threshold=1.5",
            ]
        )


def test_wise_and_soup_commands(tmp_path, capsys):
    main(["fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}"])
    ckpt = sorted(tmp_path.rglob("last*.ckpt"))[0]
    assert (
        main(["wise", str(ckpt), "--alpha", "0", "0.5", "1", "--output", str(tmp_path / "wise")])
        == 0
    )
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    w0 = torch.load(tmp_path / "wise" / "wise_alpha0.00.ckpt", weights_only=True)["state_dict"]
    w5 = torch.load(tmp_path / "wise" / "wise_alpha0.50.ckpt", weights_only=True)["state_dict"]
    w1 = torch.load(tmp_path / "wise" / "wise_alpha1.00.ckpt", weights_only=True)["state_dict"]
    key = "student.model.head.weight"
    torch.testing.assert_close(w0[key], state["teachers.initial.model.head.weight"])
    torch.testing.assert_close(w1[key], state[key])
    torch.testing.assert_close(
        w5[key], 0.5 * (state[key] + state["teachers.initial.model.head.weight"])
    )
    soup = tmp_path / "soup.ckpt"
    assert (
        main(
            [
                "soup",
                str(ckpt),
                str(tmp_path / "wise" / "wise_alpha0.00.ckpt"),
                "--output",
                str(soup),
            ]
        )
        == 0
    )
    avg = torch.load(soup, weights_only=True)["state_dict"][key]
    torch.testing.assert_close(avg, 0.5 * (state[key] + w0[key]))
    CounterfactualFineTuner.load_from_checkpoint(soup)


def test_python_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "cfmask", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert "fit" in out.stdout and "test" in out.stdout
    assert "export" in out.stdout and "plot" in out.stdout and "--version" in out.stdout


def test_example_stack_files_are_valid_yaml():
    for path in CONFIGS.rglob("*.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_every_recipe_folder_is_collected():
    # The parse test above is parametrised by a glob; an empty glob would pass silently.
    folders = {p.parent.name for p in CONFIGS.rglob("*.yaml")}
    assert {"backbone", "data", "trainer", "method", "table1", "smoke"} <= folders
    assert len(_stacks()) == len(list(CONFIGS.rglob("*.yaml")))

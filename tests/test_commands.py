"""One command line: every command under one parser, --version, typos, configs, predict."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

import cfmask
from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.cli import commands, main
from cfmask.data.synthetic import SyntheticDataModule

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "tiny_fit.yaml")
ALL = ["fit", "validate", "test", "predict", "wise", "soup", "export", "plot", "demo", "data"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["-h"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ALL:
        assert f"    {name} " in out, name
    assert "--version" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cfmask {cfmask.__version__}"


@pytest.mark.parametrize(
    ("typo", "meant"), [("fitt", "fit"), ("wsie", "wise"), ("exprot", "export")]
)
def test_typo_gets_did_you_mean(typo, meant, capsys):
    assert main([typo]) == 2
    assert f"did you mean '{meant}'" in capsys.readouterr().err


def test_option_typo_gets_did_you_mean(capsys):
    with pytest.raises(SystemExit) as info:
        main(["wise", "x.ckpt", "--alpah", "0.5"])
    assert info.value.code == 2
    assert "unrecognized option --alpah; did you mean --alpha?" in capsys.readouterr().err


def test_unrelated_word_lists_the_commands(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "did you mean" not in err
    assert "wise, soup, export" in err


@pytest.mark.parametrize("name", ["wise", "soup", "export", "plot", "demo"])
def test_commands_with_options_print_and_read_configs(name, tmp_path, capsys):
    positional = {
        "wise": ["x.ckpt"],
        "soup": ["a.ckpt", "b.ckpt"],
        "export": ["x.ckpt", "--to", "timm"],
        "plot": ["a.csv", "b.json"],
    }
    with pytest.raises(SystemExit) as info:
        main([name, *positional.get(name, []), "--output", str(tmp_path / "o"), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["output"] == str(tmp_path / "o")
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(printed))
    with pytest.raises(SystemExit):
        main([name, "-c", str(config), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == printed


def test_wise_runs_from_a_config_file(tmp_path, tiny_timm_config, capsys):
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config))
    ckpt = tmp_path / "ft.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    config = tmp_path / "wise.yaml"
    config.write_text(
        yaml.safe_dump(
            {"checkpoint": str(ckpt), "alpha": [0.0, 1.0], "output": str(tmp_path / "w")}
        )
    )
    assert main(["wise", "-c", str(config)]) == 0
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "wise_alpha0.00.ckpt",
        "wise_alpha1.00.ckpt",
    ]


def test_old_output_dir_flag_still_works_with_a_warning(tmp_path, tiny_timm_config):
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config))
    ckpt = tmp_path / "ft.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    with pytest.warns(FutureWarning, match="--output-dir is deprecated, use --output"):
        assert main(["wise", str(ckpt), "--alpha", "0.5", "--output-dir", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w" / "wise_alpha0.50.ckpt").is_file()


def test_demo_options_reach_the_demo_unchanged(monkeypatch, tmp_path):
    seen: list[list[str]] = []
    monkeypatch.setattr("cfmask.demo.main", lambda argv: seen.append(argv) or 0)
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({"quick": True, "seeds": 3}))
    assert main(["demo", "-c", str(config), "--output", str(tmp_path / "d"), "--no-install"]) == 0
    from cfmask.demo.app import build_parser

    parsed = build_parser().parse_args(seen[0])
    assert parsed.quick and parsed.no_install and parsed.seeds == 3
    assert parsed.output == tmp_path / "d" and parsed.data_dir is None


def test_demo_bad_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--seeds", "x"])
    assert info.value.code != 0


def test_data_arguments_are_handed_on(monkeypatch):
    seen: list[list[str]] = []
    monkeypatch.setattr("cfmask.data.cli.data_command", lambda argv: seen.append(argv) or 0)
    assert main(["data", "check", "--root", "/nowhere", "--sets", "imagenet_r"]) == 0
    assert seen == [["check", "--root", "/nowhere", "--sets", "imagenet_r"]]


def test_every_registered_command_is_in_the_list():
    assert commands.command_names() == ALL


def test_predict_writes_probabilities_and_top_k(tmp_path):
    out = tmp_path / "pred.csv"
    main(["fit", "-c", TINY, f"--trainer.default_root_dir={tmp_path}"])
    ckpt = sorted(tmp_path.rglob("last*.ckpt"))[0]
    main(
        [
            "predict",
            "-c",
            TINY,
            f"--ckpt_path={ckpt}",
            f"--trainer.default_root_dir={tmp_path}",
            f"--predictions.output={out}",
            "--predictions.top_k=2",
            "--predictions.probabilities=true",
        ]
    )
    rows = list(csv.DictReader(out.open()))
    dm = SyntheticDataModule(batch_size=4, train_size=8, val_size=8, test_size=8)
    assert len(rows) == 8 * len(dm.test_set_names)
    model = CounterfactualFineTuner.load_from_checkpoint(ckpt).eval()
    loader = dm.test_dataloader()[0]
    images, targets = next(iter(loader))
    with torch.no_grad():
        logits = model(images).double()
    expected = torch.exp(logits - logits.logsumexp(-1, keepdim=True))  # softmax by hand
    names = dm.class_names
    for i in range(images.shape[0]):
        row = rows[i]
        assert row["set"] == dm.test_set_names[0] and int(row["index"]) == i
        assert row["target"] == names[int(targets[i])]
        probs = [float(row[f"p_{n}"]) for n in names]
        assert probs == pytest.approx(expected[i].tolist(), abs=2e-6)
        order = expected[i].argsort(descending=True)
        assert [row["top1"], row["top2"]] == [names[int(order[0])], names[int(order[1])]]
        assert float(row["top1_prob"]) == pytest.approx(float(expected[i, order[0]]), abs=2e-6)


def test_demo_study_reaches_the_study_with_its_arguments(monkeypatch, capsys):
    seen: list[list[str]] = []
    monkeypatch.setattr("cfmask.demo.main", lambda argv: seen.append(argv) or 0)
    assert main(["demo", "study", "--data-seeds", "1", "2", "--workers", "1"]) == 0
    assert seen == [["study", "--data-seeds", "1", "2", "--workers", "1"]]
    monkeypatch.undo()
    with pytest.raises(SystemExit) as info:
        main(["demo", "study", "--help"])
    assert info.value.code == 0
    assert "claims study" in capsys.readouterr().out

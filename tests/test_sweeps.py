"""Evaluated WiSE-FT sweeps (one results file per sweep) and `cfmask plot`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.cli import main
from cfmask.cli.sweeps import ResultRow, group_rows, plot_results, read_results, write_sweep
from cfmask.data.synthetic import SyntheticDataModule

DATA = {"test_sets": ["id", "shift_a", "shift_b"], "test_size": 12, "batch_size": 5, "seed": 3}


def _finetuned(tmp_path: Path, tiny_timm_config) -> Path:
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    path = tmp_path / "ft.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def _data_config(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / f"data{len(overrides)}.yaml"
    spec = {"class_path": "SyntheticDataModule", "init_args": {**DATA, **overrides}}
    path.write_text(yaml.safe_dump({"data": spec}))
    return path


def _accuracy_by_hand(ckpt: Path, tiny_timm_config) -> dict[str, float]:
    """Top-1 of a written WiSE checkpoint, recomputed outside the fine-tuner."""
    vit = TimmViT(**tiny_timm_config).eval()
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    vit.load_state_dict(
        {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
    )
    dm = SyntheticDataModule(**DATA)
    out = {}
    for name, loader in zip(dm.test_set_names, dm.test_dataloader(), strict=True):
        correct = total = 0
        for x, y in loader:
            with torch.no_grad():
                correct += int((vit(x).argmax(-1) == y).sum())
            total += len(y)
        out[name] = correct / total
    return out


def test_wise_sweep_evaluates_every_alpha_into_one_file(tmp_path, tiny_timm_config, capsys):
    ckpt = _finetuned(tmp_path, tiny_timm_config)
    data = _data_config(tmp_path)
    args = ["wise", str(ckpt), "--alpha", "0", "0.5", "1", "--output", str(tmp_path / "w")]
    args += ["--data", str(data), "--accelerator", "cpu", "--seed", "7", "--method", "ft-run"]
    assert main(args) == 0
    assert "results written to" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "w" / "wise_results.csv").open()))
    assert [float(r["alpha"]) for r in rows] == [0.0, 0.5, 1.0]
    assert {r["method"] for r in rows} == {"ft-run"} and {r["seed"] for r in rows} == {"7"}
    hashes = {r["config_hash"] for r in rows}
    assert len(hashes) == 1 and len(hashes.pop()) == 12
    for r in rows:
        assert Path(r["checkpoint"]).is_absolute() and Path(r["checkpoint"]).is_file()
        assert r["source"] == str(ckpt.resolve())
        by_hand = _accuracy_by_hand(Path(r["checkpoint"]), tiny_timm_config)
        for name, value in by_hand.items():
            assert float(r[name]) == pytest.approx(value, abs=1e-6)
        assert float(r["ood_avg"]) == pytest.approx((by_hand["shift_a"] + by_hand["shift_b"]) / 2)
        assert r["id_set"] == "id"


def test_config_hash_changes_with_the_data(tmp_path, tiny_timm_config):
    ckpt = _finetuned(tmp_path, tiny_timm_config)
    hashes = []
    for i, data in enumerate((_data_config(tmp_path), _data_config(tmp_path, test_size=7))):
        main(
            [
                "wise",
                str(ckpt),
                "--alpha",
                "1",
                "--output",
                str(tmp_path / f"w{i}"),
                "--data",
                str(data),
                "--accelerator",
                "cpu",
            ]
        )
        (row,) = csv.DictReader((tmp_path / f"w{i}" / "wise_results.csv").open())
        hashes.append(row["config_hash"])
    assert hashes[0] != hashes[1]


def test_bad_data_config_writes_no_checkpoint(tmp_path, tiny_timm_config, capsys):
    ckpt = _finetuned(tmp_path, tiny_timm_config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trainer": {"max_steps": 1}}))
    with pytest.raises(SystemExit):
        main(["wise", str(ckpt), "--output", str(tmp_path / "w"), "--data", str(bad)])
    assert "class_path" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def _row(method, alpha, seed, id_acc, ood):
    return ResultRow(method, alpha, seed, {"id": id_acc, "o1": ood}, "id", ood)


def test_seeds_are_averaged_with_sample_std(tmp_path):
    a = write_sweep(
        tmp_path / "s0.csv", [_row("m", 0.0, "0", 0.5, 0.4), _row("m", 1.0, "0", 0.8, 0.3)]
    )
    b = write_sweep(
        tmp_path / "s1.csv", [_row("m", 0.0, "1", 0.7, 0.2), _row("m", 1.0, "1", 0.9, 0.5)]
    )
    curves, points = group_rows(read_results([a, b]))
    assert not points
    (zero, one) = curves["m"]
    assert zero["alpha"] == 0.0 and zero["id"] == pytest.approx(60.0)
    assert zero["id_std"] == pytest.approx(math.sqrt(((50 - 60) ** 2 + (70 - 60) ** 2) / 1))
    assert one["ood_avg"] == pytest.approx(40.0) and one["ood_avg_std"] == pytest.approx(
        math.sqrt(200.0)
    )


def test_plot_mixes_sweeps_and_test_results(tmp_path, capsys):
    sweep = write_sweep(
        tmp_path / "sweep.csv",
        [_row("WiSE-FT", a, "", 0.6 + 0.1 * a, 0.5 - 0.1 * a) for a in (0, 0.5, 1)],
    )
    run = tmp_path / "ours" / "results.json"
    run.parent.mkdir()
    run.write_text(
        json.dumps(
            {"acc1": {"imagenet": 0.81, "imagenet_r": 0.6}, "ood_avg": 0.6, "id_set": "imagenet"}
        )
    )
    curves, points = group_rows(read_results([sweep, run]))
    assert list(curves) == ["WiSE-FT"] and points["ours"]["id"]["mean"] == pytest.approx(81.0)
    out = tmp_path / "fig.png"
    assert main(["plot", str(sweep), str(run), "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    relabelled = plot_results([sweep, run], tmp_path / "fig2.png", labels=["a", "b"])
    assert relabelled.is_file()


def test_plot_rejects_foreign_files(tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("x,y\n1,2\n")
    with pytest.raises(SystemExit):
        main(["plot", str(other), "--output", str(tmp_path / "f.png")])
    assert "not a cfmask sweep file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="one per file"):
        read_results([other], labels=["a", "b"])


def test_demo_report_draws_through_the_shared_plotting_code(tmp_path, monkeypatch):
    from cfmask.demo import report
    from cfmask.evaluation import plotting

    calls = []
    original = plotting.draw_tradeoff

    def spy(ax, curves, points, labels, keys, title, **kw):
        calls.append((list(keys), title))
        return original(ax, curves, points, labels, keys, title, **kw)

    monkeypatch.setattr(plotting, "draw_tradeoff", spy)
    stat = {"mean": 50.0, "std": 1.0, "n": 2}
    points = {"vanilla": {"id": stat, "ood_avg": stat}, "ours": {"id": stat, "ood_avg": stat}}
    curve = [{"alpha": a, "id": 40 + 10 * a, "ood_avg": 30 + a} for a in (0.0, 0.5, 1.0)]
    out = tmp_path / "tradeoff.png"
    report.plot_tradeoff(out, points, {"ours": "Ours"}, {"WiSE-FT": curve}, ["ours"], ["vanilla"])
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert [c[0] for c in calls] == [["ours"], ["vanilla"]]

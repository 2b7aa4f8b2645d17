"""`cfmask data check`: per-set counts vs expected, truncation and error reporting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cfmask.data.cli import check_layout, data_command

from ._fake_trees import TEST_SETS


def test_check_layout_reports_every_set(data_root: Path) -> None:
    rep = check_layout(data_root)
    by = {s.name: s for s in rep.sets}
    assert list(by) == ["imagenet_train", *TEST_SETS]
    assert rep.ok and set(rep.truncated) == set(by)
    assert by["imagenet_train"].images == 2000 and by["imagenet_train"].expected_images == 1_281_167
    assert by["imagenet_sketch"].path.endswith("sketch")
    assert by["objectnet"].images == 8 and "12 images in all folders" in by["objectnet"].message
    assert "FEWER images than published" in by["imagenet_r"].message


def test_check_layout_missing_and_broken(tmp_path: Path, data_root: Path) -> None:
    (tmp_path / "imagenet-r" / "n99999999").mkdir(parents=True)
    rep = check_layout(tmp_path, sets=["imagenet_a", "imagenet_r"])
    a, r = rep.sets
    assert a.status == "missing" and str(tmp_path / "imagenet-a") in a.message
    assert r.status == "error" and "n99999999" in r.message
    assert not rep.ok


def test_data_command(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.json"
    code = data_command(
        ["check", "--root", str(data_root), "--sets", "imagenet_r", "--json", str(out)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "truncated" in text and "WARNING" in text
    assert json.loads(out.read_text())["sets"][0]["images"] == 200
    assert (
        data_command(["check", "--root", str(data_root), "--sets", "imagenet_r", "--strict"]) == 1
    )
    assert data_command(["check", "--root", str(tmp_path), "--sets", "imagenet_a"]) == 1
    assert data_command(["frobnicate"]) == 2


def test_classes_column_counts_folders_that_hold_images(tmp_path: Path) -> None:
    from _fake_trees import make_folder_set

    from cfmask.data.imagenet import imagenet_r_wnids

    wnids = imagenet_r_wnids()
    make_folder_set(tmp_path / "imagenet-r", wnids, ext=".jpg")
    for empty in wnids[:2]:
        for f in (tmp_path / "imagenet-r" / empty).iterdir():
            f.unlink()
    (report,) = check_layout(tmp_path, sets=["imagenet_r"]).sets
    assert report.images == 198
    assert (report.classes, report.expected_classes) == (198, 200)
    assert "2 class folder(s) hold no images" in report.message and wnids[0] in report.message


def test_data_check_reads_a_config_file_and_prints_it(data_root: Path, tmp_path: Path, capsys):
    config = tmp_path / "check.yaml"
    config.write_text(f"root: {data_root}\nsets: [imagenet_r]\njson: {tmp_path / 'r.json'}\n")
    assert data_command(["check", "-c", str(config)]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["sets"][0]["name"] == "imagenet_r"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        data_command(["check", "-c", str(config), "--verify", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["root"] == str(data_root) and printed["verify"] is True

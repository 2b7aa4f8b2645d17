"""Subset projection, multi-label rule, OOD average and result files vs hand computation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cfmask.evaluation.eval_sets import EvalSet
from cfmask.evaluation.metrics import (
    SubsetAccuracy,
    make_test_metrics,
    ood_average,
    project_logits,
    restrict_logits,
    top1_correct,
)
from cfmask.evaluation.reporting import results_table, write_results


def test_restrict_and_project() -> None:
    logits = torch.tensor([[9.0, 1.0, 5.0, 3.0]])
    sub = torch.tensor([1, 3])
    assert restrict_logits(logits, sub).tolist() == [[-math.inf, 1.0, -math.inf, 3.0]]
    assert project_logits(logits, sub).tolist() == [[1.0, 3.0]]
    assert restrict_logits(logits, None) is logits


def test_subset_accuracy_single_label() -> None:
    # overall argmax is class 0 (outside subset); within {1, 3}: row0 -> 3, row1 -> 1, row2 -> 3
    logits = torch.tensor([[9.0, 1.0, 5.0, 3.0], [9.0, 4.0, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
    m = SubsetAccuracy(4, torch.tensor([1, 3]))
    m.update(logits, torch.tensor([3, 3, 3]))
    assert m.compute().item() == pytest.approx(2 / 3)
    full = SubsetAccuracy(4)
    full.update(logits, torch.tensor([3, 3, 3]))
    assert full.compute().item() == pytest.approx(1 / 3)


def test_subset_accuracy_multilabel_objectnet_rule() -> None:
    # subset {1, 2, 3}; sample 0 true classes {2, 3}, sample 1 {1}
    logits = torch.tensor([[9.0, 0.0, 1.0, 2.0], [9.0, 0.0, 1.0, 2.0]])
    target = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    m = SubsetAccuracy(4, [1, 2, 3], multi_label=True)
    m.update(logits, target)
    assert m.compute().item() == 0.5  # pred 3 for both: right for 0, wrong for 1
    assert top1_correct(logits, target, torch.tensor([1, 2, 3])).tolist() == [True, False]


def test_subset_accuracy_rejects_bad_input() -> None:
    m = SubsetAccuracy(4, [1, 3])
    with pytest.raises(ValueError, match="outside"):
        m.update(torch.zeros(1, 4), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        m.update(torch.zeros(1, 5), torch.tensor([1]))
    with pytest.raises(ValueError, match="class_subset"):
        SubsetAccuracy(4, [7])


def test_ood_average_and_files(tmp_path: Path) -> None:
    results = {"imagenet": 0.75, "imagenet_r": 0.5, "objectnet": 0.25}
    assert ood_average(results) == 0.375
    sets = [
        EvalSet("imagenet", num_samples=50_000, expected_samples=50_000, is_id=True),
        EvalSet("imagenet_r", torch.tensor([1, 2]), num_samples=30_000, expected_samples=30_000),
        EvalSet("objectnet", multi_label=True, num_samples=9_000, expected_samples=18_574),
    ]
    assert [s.truncated for s in sets] == [False, False, True]
    metrics = make_test_metrics(sets)
    assert list(metrics) == ["imagenet", "imagenet_r", "objectnet"]
    assert metrics["objectnet"].multi_label
    jp, cp = write_results(results, tmp_path, sets, skipped={"imagenet_r": ["/x/a.jpg"]})
    data = json.loads(jp.read_text())
    assert data["ood_avg"] == 0.375 and data["acc1"]["imagenet"] == 0.75
    assert any("objectnet" in w and "TRUNCATED" in w for w in data["warnings"])
    assert data["skipped"] == {"imagenet_r": ["/x/a.jpg"]}
    rows = list(csv.DictReader(cp.open()))
    assert [r["set"] for r in rows] == ["imagenet", "imagenet_r", "objectnet", "ood_avg"]
    assert rows[2]["truncated"] == "True" and float(rows[3]["acc1"]) == 0.375
    console = Console(record=True, width=140)
    console.print(results_table(results, sets))
    text = console.export_text()
    assert "TRUNCATED" in text and "37.50" in text and "imagenet (ID)" in text

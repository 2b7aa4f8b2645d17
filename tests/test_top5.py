"""Top-5 accuracy next to top-1: metric, logged values, table and result files."""

from __future__ import annotations

import csv
import json
import math

import lightning.pytorch as pl
import pytest
import torch
from rich.console import Console

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.data.synthetic import SyntheticDataModule
from cfmask.evaluation.eval_sets import EvalSet
from cfmask.evaluation.metrics import SubsetAccuracy, topk_correct
from cfmask.evaluation.reporting import results_table, write_results
from cfmask.testing import quiet_trainer
from cfmask.training import callbacks


def _top5_by_hand(logits, targets, allowed):
    """Rank the allowed classes of each row with Python's sort; count target in the best 5."""
    hits = 0
    for row, target in zip(logits.tolist(), targets, strict=True):
        ranked = sorted(allowed, key=lambda c: -row[c])[:5]
        marked = [target] if isinstance(target, int) else [c for c, t in enumerate(target) if t]
        hits += any(c in ranked for c in marked)
    return hits / len(logits)


def test_topk_correct_matches_a_hand_ranking():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 12, generator=g)
    subset = torch.tensor([0, 2, 3, 5, 7, 8, 11])
    targets = subset[torch.randint(0, len(subset), (64,), generator=g)]
    got = topk_correct(logits, targets, 5, subset).float().mean().item()
    assert got == pytest.approx(_top5_by_hand(logits, targets.tolist(), subset.tolist()))
    with pytest.raises(ValueError, match="k must be in"):
        topk_correct(logits, targets, 8, subset)


def test_subset_accuracy_counts_top5_for_single_and_multi_label():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 10, generator=g)
    targets = torch.randint(0, 10, (40,), generator=g)
    m = SubsetAccuracy(10)
    m.update(logits[:25], targets[:25])
    m.update(logits[25:], targets[25:])
    assert m.compute_top_k().item() == pytest.approx(
        _top5_by_hand(logits, targets.tolist(), list(range(10)))
    )
    assert m.compute().item() == pytest.approx((logits.argmax(1) == targets).float().mean().item())

    multi = (torch.rand(40, 10, generator=g) < 0.15).long()
    multi[torch.arange(40), targets] = 1
    ml = SubsetAccuracy(10, multi_label=True)
    ml.update(logits, multi)
    assert ml.compute_top_k().item() == pytest.approx(
        _top5_by_hand(logits, multi.tolist(), list(range(10)))
    )


def test_top5_is_not_reported_for_five_classes_or_fewer():
    m = SubsetAccuracy(10, torch.tensor([1, 2, 3, 4, 5]))
    m.update(torch.randn(4, 10), torch.tensor([1, 2, 3, 4]))
    assert not m.has_top_k and math.isnan(m.compute_top_k().item())


def test_table_and_files_show_top5(tmp_path):
    sets = [EvalSet("id", num_classes=10, is_id=True), EvalSet("a"), EvalSet("b", num_classes=10)]
    results = {"id": 0.5, "a": 0.25, "b": 0.75}
    top5 = {"id": 0.9, "a": 0.6, "b": 0.8}
    json_path, csv_path = write_results(results, tmp_path, eval_sets=sets, top5=top5)
    payload = json.loads(json_path.read_text())
    assert payload["acc5"] == top5 and payload["ood_avg_acc5"] == pytest.approx(0.7)
    rows = {r["set"]: r for r in csv.DictReader(csv_path.open())}
    assert float(rows["a"]["acc5"]) == 0.6 and float(rows["ood_avg"]["acc5"]) == pytest.approx(0.7)
    console = Console(width=120, record=True)
    console.print(results_table(results, eval_sets=sets, top5={"id": 0.9, "a": 0.6}))
    text = console.export_text()
    assert "Top-5" in text and "90.00" in text and "60.00" in text
    # b has no top-5, so neither has the OOD average: both rows show "-".
    assert [line.split("│")[3].strip() for line in text.splitlines() if "OOD average" in line] == [
        "-"
    ]


def test_test_run_logs_and_writes_top5(tmp_path, tiny_timm_config):
    config = {**tiny_timm_config, "num_classes": 8}
    model = CounterfactualFineTuner(TimmViT(**config), distillation=[])
    data = SyntheticDataModule(num_classes=8, batch_size=8, test_size=24, test_sets=["id", "shift"])
    report = callbacks.TestResultsReport(output_dir=str(tmp_path))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[report],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.test(model, datamodule=data, verbose=False)
    model.eval()
    expected = {}
    with torch.no_grad():
        for name, loader in zip(data.test_set_names, data.test_dataloader(), strict=True):
            logits, targets = [], []
            for x, y in loader:
                logits.append(model(x))
                targets.append(y)
            expected[name] = _top5_by_hand(torch.cat(logits), torch.cat(targets).tolist(), range(8))
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["acc5"] == pytest.approx(expected)
    assert trainer.callback_metrics["test/shift/acc5"].item() == pytest.approx(expected["shift"])
    assert trainer.callback_metrics["test/ood_avg/acc5"].item() == pytest.approx(expected["shift"])


def test_plain_python_test_run_logs_top5_without_the_report_callback(tmp_path, tiny_timm_config):
    config = {**tiny_timm_config, "num_classes": 8}
    model = CounterfactualFineTuner(TimmViT(**config), distillation=[])
    data = SyntheticDataModule(num_classes=8, batch_size=8, test_size=24, test_sets=["id", "shift"])
    trainer = quiet_trainer(tmp_path)
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    model.eval()
    with torch.no_grad():
        x, y = zip(*data.test_dataloader()[0], strict=True)
        expected = _top5_by_hand(model(torch.cat(x)), torch.cat(y).tolist(), range(8))
    assert metrics["test/id/acc5"] == pytest.approx(expected)
    assert {"test/shift/acc5", "test/ood_avg/acc5"} <= set(metrics)
    assert model.test_results_top5["id"] == pytest.approx(expected)

"""A checkpoint written before the package was split into layers still loads and predicts.

``tests/reference/legacy_tiny.ckpt`` was written by ``cfmask fit`` on
``tests/conf/tiny_fit.yaml`` with the flat-module layout
(``python tests/reference/make_legacy_checkpoint.py``); its hyper-parameters name
components by their ``class_path`` at that time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cfmask import CounterfactualFineTuner

REFERENCE = Path(__file__).resolve().parent / "reference"


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(21))


def test_legacy_checkpoint_loads_and_gives_the_stored_logits():
    model = CounterfactualFineTuner.load_from_checkpoint(REFERENCE / "legacy_tiny.ckpt").eval()
    stored = torch.load(REFERENCE / "legacy_tiny_outputs.pt", weights_only=True)["logits"]
    with torch.no_grad():
        logits = model(_images())
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, stored, rtol=0, atol=1e-6)
    assert type(model.masker).__name__ == "ObjectMasker" and model.masker.threshold == 0.3
    assert [type(d).__name__ for d in model.distillation] == ["FeatureDistillationLoss"]

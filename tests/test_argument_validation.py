"""No nan, inf or string reaches training: each numeric argument is checked by name."""

from __future__ import annotations

import math

import pytest

from cfmask import CounterfactualFineTuner
from cfmask.backbones import TimmViT
from cfmask.core.validation import check_number
from cfmask.losses import FeatureDistillationLoss, LogitDistillationLoss
from cfmask.masking import RandomMasker
from cfmask.testing import tiny_timm_args

NAN, INF = math.nan, math.inf


def _backbone() -> TimmViT:
    return TimmViT(**tiny_timm_args(depth=1))


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"lr": NAN}, ValueError, r"lr must be a finite number, got nan"),
        ({"lr": INF}, ValueError, r"lr must be a finite number, got inf"),
        ({"lr": "1e-3"}, TypeError, r"lr must be a number, got '1e-3' \(str\)"),
        ({"lr": 0.0}, ValueError, r"lr must be > 0, got 0.0"),
        ({"weight_decay": NAN}, ValueError, r"weight_decay must be a finite number"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay must be >= 0"),
        ({"betas": (0.9, NAN)}, ValueError, r"betas\[1\] must be a finite number"),
        ({"betas": (1.0, 0.999)}, ValueError, r"betas\[0\] must be in \[0, 1\)"),
        ({"warmup_steps": 2.5}, TypeError, r"warmup_steps must be an integer"),
        ({"pct_start": NAN}, ValueError, r"pct_start must be a finite number"),
        ({"gradient_clip_norm": -1.0}, ValueError, r"gradient_clip_norm must be >= 0, got -1.0"),
        ({"gradient_clip_norm": NAN}, ValueError, r"gradient_clip_norm must be a finite"),
        ({"gradient_clip_norm": "1"}, TypeError, r"gradient_clip_norm must be a number"),
    ],
)
def test_fine_tuner_numbers_are_checked_by_name(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        CounterfactualFineTuner(_backbone(), distillation=[], **kwargs)


@pytest.mark.parametrize(
    ("build", "error", "pattern"),
    [
        (
            lambda: FeatureDistillationLoss(weight=NAN),
            ValueError,
            r"distillation weight must be a finite",
        ),
        (
            lambda: FeatureDistillationLoss(weight="30"),
            TypeError,
            r"distillation weight must be a number",
        ),
        (
            lambda: LogitDistillationLoss(temperature=NAN),
            ValueError,
            r"temperature must be a finite",
        ),
        (
            lambda: LogitDistillationLoss(temperature=INF),
            ValueError,
            r"temperature must be a finite",
        ),
        (lambda: LogitDistillationLoss(temperature=0.0), ValueError, r"temperature must be > 0"),
    ],
)
def test_loss_numbers_are_checked_by_name(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_random_masker_without_counterfactual_warns(ratio):
    with pytest.warns(UserWarning, match=rf"RandomMasker\(ratio={ratio}\).*no counterfactual"):
        RandomMasker(ratio=ratio)


def test_zero_gradient_clip_norm_still_means_off():
    model = CounterfactualFineTuner(_backbone(), distillation=[], gradient_clip_norm=0.0)
    assert model.hparams["gradient_clip_norm"] == 0.0


def test_check_number_accepts_numpy_and_torch_free_numbers():
    import numpy as np

    assert check_number("x", np.float32(0.5), low=0, high=1) == 0.5
    with pytest.raises(TypeError, match="x must be a number, got True"):
        check_number("x", True)

"""The paper's trainer recipes give a global batch of 512 whatever the machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cfmask.backbones import TimmViT
from cfmask.cli import main
from cfmask.data.synthetic import SyntheticDataModule
from cfmask.testing import quiet_trainer
from cfmask.training.finetuner import CounterfactualFineTuner
from cfmask.training.recipe_checks import global_batch_mismatch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
PAPER_RECIPES = sorted((CONFIGS / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: p.name)
def test_paper_recipes_give_a_global_batch_of_512(recipe, capsys):
    stack = [
        CONFIGS / "backbone" / "openclip_vitb32.yaml",
        CONFIGS / "data" / "imagenet_ood.yaml",
        recipe,
    ]
    args = ["fit"]
    for path in stack:
        args += ["-c", str(path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    trainer = config["trainer"]
    devices = trainer["devices"]
    # "auto" or a device list would let the global batch grow with the machine.
    assert isinstance(devices, int), f"{recipe.name}: devices must be a number, got {devices!r}"
    per_device = config["data"]["init_args"]["batch_size"]
    accumulate = trainer.get("accumulate_grad_batches") or 1
    nodes = trainer.get("num_nodes") or 1
    assert per_device * devices * nodes * accumulate == 512
    assert config["model"]["recipe_global_batch"] == 512


def test_global_batch_mismatch_counts_devices_nodes_and_accumulation():
    assert global_batch_mismatch(512, 128, 4) is None
    assert global_batch_mismatch(512, 64, 4, accumulate=2) is None
    message = global_batch_mismatch(512, 512, 4)
    assert message is not None and "2048" in message and "512" in message
    assert "cannot be checked" in str(global_batch_mismatch(512, None, 1))


def _fit(recipe_global_batch, tmp_path, tiny_timm_config):

    model = CounterfactualFineTuner(
        TimmViT(**tiny_timm_config),
        distillation=[],
        warmup_steps=1,
        recipe_global_batch=recipe_global_batch,
    )
    data = SyntheticDataModule(num_classes=3, batch_size=4, train_size=8, val_size=4, test_size=4)
    trainer = quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)


def test_fit_warns_when_the_global_batch_differs_from_the_recipe(tmp_path, tiny_timm_config):
    with pytest.warns(UserWarning, match="global batch of 512, but this run's global batch is 4"):
        _fit(512, tmp_path, tiny_timm_config)


def test_fit_is_quiet_when_the_global_batch_matches(tmp_path, recwarn, tiny_timm_config):
    _fit(4, tmp_path, tiny_timm_config)
    assert not [w for w in recwarn if "global batch" in str(w.message)]


def test_recipe_global_batch_must_be_positive(tiny_timm_config):
    with pytest.raises(ValueError, match="recipe_global_batch must be > 0"):
        CounterfactualFineTuner(TimmViT(**tiny_timm_config), recipe_global_batch=0)

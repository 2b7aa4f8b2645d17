"""OpenCLIPViT's zero-shot head built from an ImageFolderDataModule's class names."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import open_clip
import pytest
import torch
from PIL import Image

from cfmask import CounterfactualFineTuner
from cfmask.backbones import OpenCLIPViT
from cfmask.data import ImageFolderDataModule
from cfmask.losses import FeatureDistillationLoss, LogitDistillationLoss
from cfmask.testing import (
    quiet_trainer,
    quiet_trainer_settings,
    tiny_clip_args,
    tiny_clip_config,
)

TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}."]
FOLDERS = ["red_fox", "tabby_cat", "zebra"]  # class names "red fox", "tabby cat", "zebra"


def _tree(root: Path) -> Path:
    for i, folder in enumerate(FOLDERS):
        for j in range(4):
            path = root / "mine" / "train" / folder / f"{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 36), (60 * i, 20 * j, 90)).save(path)
    return root / "mine"


def _clip_file(path: Path) -> open_clip.CLIP:
    torch.manual_seed(3)
    clip = open_clip.CLIP(**tiny_clip_config()).eval()
    torch.save(clip.state_dict(), path)
    return clip


def _backbone(tmp_path: Path, weights: Path) -> OpenCLIPViT:
    args = tiny_clip_args(tmp_path / "text-cache", class_names="datamodule", templates=TEMPLATES)
    return OpenCLIPViT(**args, pretrained=str(weights))


def _trainer(tmp_path: Path) -> pl.Trainer:
    return quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False, limit_val_batches=0)


def test_head_rows_equal_open_clips_classifier_for_the_folder_class_names(tmp_path):
    clip = _clip_file(tmp_path / "clip.pt")
    dm = ImageFolderDataModule(
        root=str(_tree(tmp_path)), image_size=32, batch_size=2, num_workers=0, val_size=3
    )
    assert dm.class_names == ["red fox", "tabby cat", "zebra"]
    backbone = _backbone(tmp_path, tmp_path / "clip.pt")
    assert backbone.needs_class_names and backbone.num_classes == 0
    model = CounterfactualFineTuner(backbone, distillation=None, warmup_steps=1)
    _trainer(tmp_path).fit(model, datamodule=dm)

    reference = open_clip.build_zero_shot_classifier(
        clip,
        tokenizer=open_clip.SimpleTokenizer(context_length=77),
        classnames=dm.class_names,
        templates=TEMPLATES,
        device="cpu",
    )  # (D, K), unit columns
    teacher = model.teachers["initial"]
    assert teacher.num_classes == 3 and not teacher.needs_class_names
    torch.testing.assert_close(teacher.head.weight / 100.0, reference.T, atol=1e-5, rtol=0)
    assert model.student.num_classes == 3
    assert model.hparams["backbone"]["init_args"]["class_names"] == dm.class_names
    # Only the 3-class head was ever built: one cache entry, no 1000-class head first.
    (entry,) = (tmp_path / "text-cache").glob("*.pt")
    assert torch.load(entry, weights_only=True)["class_names"] == dm.class_names


def test_checkpoint_of_a_datamodule_head_rebuilds_without_the_datamodule(tmp_path):
    _clip_file(tmp_path / "clip.pt")
    dm = ImageFolderDataModule(
        root=str(_tree(tmp_path)), image_size=32, batch_size=2, num_workers=0, val_size=3
    )
    model = CounterfactualFineTuner(_backbone(tmp_path, tmp_path / "clip.pt"), warmup_steps=1)
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    again = CounterfactualFineTuner.load_from_checkpoint(tmp_path / "run.ckpt")
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again(images), model.cpu()(images))


def test_init_weights_and_teachers_are_loaded_after_the_deferred_head(tmp_path):
    _clip_file(tmp_path / "clip.pt")
    names = ["red fox", "tabby cat", "zebra"]
    args = tiny_clip_args(tmp_path / "text-cache", class_names=names, templates=TEMPLATES)
    probe = OpenCLIPViT(**args, pretrained=str(tmp_path / "clip.pt"))
    with torch.no_grad():
        probe.head.bias.fill_(0.25)
    torch.save(probe.state_dict(), tmp_path / "probe.pt")
    dm = ImageFolderDataModule(
        root=str(_tree(tmp_path)), image_size=32, batch_size=2, num_workers=0, val_size=3
    )
    with torch.no_grad():
        probe.head.bias.fill_(-0.5)
    torch.save(probe.state_dict(), tmp_path / "wise.pt")
    model = CounterfactualFineTuner(
        _backbone(tmp_path, tmp_path / "clip.pt"),
        init_weights=str(tmp_path / "probe.pt"),
        distillation=[
            FeatureDistillationLoss(),
            LogitDistillationLoss(teacher=str(tmp_path / "wise.pt")),
        ],
        lr=1e-12,
        warmup_steps=1,
    )
    _trainer(tmp_path).fit(model, datamodule=dm)
    teachers = dict(model.teachers.items())
    (wise_key,) = [k for k in teachers if k != "initial"]
    assert torch.allclose(teachers["initial"].head.bias, torch.full((3,), 0.25))
    assert torch.allclose(teachers[wise_key].head.bias, torch.full((3,), -0.5))
    assert not any(p.requires_grad for p in model.teachers.parameters())


def test_deferred_head_refuses_to_classify_before_it_is_built(tmp_path):
    _clip_file(tmp_path / "clip.pt")
    backbone = _backbone(tmp_path, tmp_path / "clip.pt")
    with pytest.raises(RuntimeError, match="waits for class names"):
        backbone(torch.rand(1, 3, 32, 32))
    backbone.set_class_names(["a", "b"])
    assert backbone(torch.rand(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(RuntimeError, match="already built"):
        backbone.set_class_names(["a", "b"], torch.zeros(2, 32))


def test_a_class_names_string_other_than_datamodule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'datamodule'"):
        OpenCLIPViT("tiny-clip", model_cfg=tiny_clip_config(), class_names="cats")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_names is empty"):
        OpenCLIPViT("tiny-clip", model_cfg=tiny_clip_config(), class_names=[])


def test_datamodule_without_class_names_is_a_clear_error(tmp_path):
    from cfmask.data.synthetic import SyntheticDataModule

    _clip_file(tmp_path / "clip.pt")

    nameless = SyntheticDataModule(num_classes=3, batch_size=2, train_size=4)
    nameless.class_names = []
    model = CounterfactualFineTuner(_backbone(tmp_path, tmp_path / "clip.pt"), warmup_steps=1)
    with pytest.raises(ValueError, match="has no class_names"):
        _trainer(tmp_path).fit(model, datamodule=nameless)


def test_cli_fit_and_test_with_the_image_folder_recipe(tmp_path):
    import yaml

    from cfmask.cli import main

    root = Path(__file__).resolve().parents[2]
    recipe = root / "examples" / "configs" / "data" / "image_folder.yaml"
    mine = _tree(tmp_path)
    for name in ("sketches", "night"):
        for i, folder in enumerate(FOLDERS[:2]):
            path = tmp_path / "ood" / name / folder / "0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (33, 35), (90, 30 * i, 10)).save(path)
    _clip_file(tmp_path / "clip.pt")
    run = {
        "seed_everything": 0,
        "trainer": quiet_trainer_settings(str(tmp_path / "run"), max_steps=1),
        "model": {
            "backbone": {
                "class_path": "cfmask.backbones.OpenCLIPViT",
                "init_args": {
                    "model_name": "tiny-clip",
                    "pretrained": str(tmp_path / "clip.pt"),
                    "model_cfg": tiny_clip_config(),
                },
            },
            "warmup_steps": 1,
        },
        "data": {
            "init_args": {
                "root": str(mine),
                "ood_roots": {n: str(tmp_path / "ood" / n) for n in ("sketches", "night")},
                "image_size": 32,
                "batch_size": 2,
                "num_workers": 0,
                "val_size": 3,
                "test_size": 3,
            }
        },
    }
    data = {"data": run.pop("data")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    # backbone first, then the recipe, then this tree's paths (as the docs stack them)
    stack = ["-c", str(tmp_path / "run.yaml"), "-c", str(recipe), "-c", str(tmp_path / "data.yaml")]
    stack += [f"--model.backbone.init_args.text_cache_dir={tmp_path / 'text-cache'}"]
    main(["fit", *stack])
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    main(["test", *stack, f"--ckpt_path={ckpt}"])
    (results,) = (tmp_path / "run").rglob("results.json")
    assert set(yaml.safe_load(results.read_text())["acc1"]) == {"my_dataset", "sketches", "night"}
    # other class names in the datamodule than in the checkpoint: refused
    renamed = ["--data.init_args.class_names=[fox, cat, horse]", f"--ckpt_path={ckpt}"]
    with pytest.raises(ValueError, match="trained with the backbone"):
        main(["test", *stack, *renamed])


def _fake_rank(model, rank: int, dm, sent: list, received):
    from types import SimpleNamespace

    def broadcast(obj, src=0):
        assert src == 0
        sent.append(obj)
        return received if rank else obj

    strategy = SimpleNamespace(
        root_device=torch.device("cpu"), broadcast=broadcast, checkpoint_io=None
    )
    model._trainer = SimpleNamespace(is_global_zero=rank == 0, strategy=strategy, datamodule=dm)


def test_under_ddp_only_rank_zero_encodes_and_the_others_take_its_weight(tmp_path, monkeypatch):
    _clip_file(tmp_path / "clip.pt")
    dm = ImageFolderDataModule(root=str(_tree(tmp_path)), image_size=32, num_workers=0)
    calls = []
    original = OpenCLIPViT.zero_shot_weight

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("device"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OpenCLIPViT, "zero_shot_weight", counting)
    rank0 = CounterfactualFineTuner(_backbone(tmp_path, tmp_path / "clip.pt"))
    sent: list = []
    _fake_rank(rank0, 0, dm, sent, None)
    rank0.setup("test")
    assert calls == [torch.device("cpu")] and sent[0].shape == (3, 32)

    rank1 = CounterfactualFineTuner(_backbone(tmp_path, tmp_path / "clip.pt"))
    from_rank0 = sent[0]
    sent.clear()
    _fake_rank(rank1, 1, dm, sent, from_rank0)
    rank1.setup("test")
    assert calls == [torch.device("cpu")]  # rank 1 never ran the text tower
    assert sent == [None]
    torch.testing.assert_close(rank1.student.head.weight, from_rank0)
    torch.testing.assert_close(rank1.teachers["initial"].head.weight, from_rank0)


def test_spawned_workers_are_refused_before_training(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    _clip_file(tmp_path / "clip.pt")
    dm = ImageFolderDataModule(root=str(_tree(tmp_path)), image_size=32, num_workers=0)
    model = CounterfactualFineTuner(_backbone(tmp_path, tmp_path / "clip.pt"))
    launcher = _MultiProcessingLauncher.__new__(_MultiProcessingLauncher)
    strategy = SimpleNamespace(
        launcher=launcher, root_device=torch.device("cpu"), checkpoint_io=None
    )
    model._trainer = SimpleNamespace(is_global_zero=True, strategy=strategy, datamodule=dm)
    with pytest.raises(ValueError, match="strategy: ddp"):
        model.setup("fit")

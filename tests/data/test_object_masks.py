"""Ground-truth object masks next to a user's class folders (``masks_root``).

The generated images are blue with one red rectangle (the object) at a known
place; the mask files mark exactly that rectangle. With nearest-neighbour
resampling a transformed image keeps pure colours, so after any crop, resize or
flip the mask must equal "pixel is red" exactly: an independent check of the
alignment that does not use the transform code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from cfmask.data import CorruptImageError, DataLayoutError, ImageFolderDataModule
from cfmask.data.masks import ImageMaskTransform, ObjectMaskError, load_mask, mask_path
from cfmask.data.transforms import eval_transform, train_transform

CLASSES = ("cat", "dog", "red_fox")
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _box(index: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """An off-centre rectangle ``(left, top, right, bottom)`` that depends on ``index``."""
    w, h = size
    left, top = 3 + index % 7, 2 + (3 * index) % 5
    return left, top, left + w // 3 + index % 4, top + h // 2 - index % 3


def _write_pair(image: Path, mask: Path | None, index: int, size=(40, 36)) -> None:
    img = Image.new("RGB", size, BLUE)
    box = _box(index, size)
    img.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), RED), box[:2])
    image.parent.mkdir(parents=True, exist_ok=True)
    img.save(image)
    if mask is not None:
        m = Image.new("L", size, 0)
        m.paste(255, box)
        mask.parent.mkdir(parents=True, exist_ok=True)
        m.save(mask)


def _make(root: Path, masks: Path, part: str, per_class: int, start: int = 0) -> None:
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            rel = Path(part) / name / f"img{i}"
            index = start + 10 * c + i
            _write_pair(root / rel.with_suffix(".png"), masks / rel.with_suffix(".png"), index)


@pytest.fixture()
def masked_root(tmp_path: Path) -> Path:
    """``mine/train`` (3 classes x 6) and ``mine/test`` (x 2) with masks in ``mine_masks``."""
    _make(tmp_path / "mine", tmp_path / "mine_masks", "train", 6)
    _make(tmp_path / "mine", tmp_path / "mine_masks", "test", 2, start=100)
    for c in CLASSES[:2]:  # an OOD folder without masks
        _write_pair(tmp_path / "ood" / c / "0.png", None, 7)
    return tmp_path


def _module(tmp: Path, **kw: Any) -> ImageFolderDataModule:
    settings: dict[str, Any] = {
        "root": str(tmp / "mine"),
        "masks_root": str(tmp / "mine_masks"),
        "ood_roots": {"ood": str(tmp / "ood")},
        "image_size": 32,
        "interpolation": "nearest",
        "batch_size": 4,
        "num_workers": 0,
        "val_size": 3,
    }
    settings.update(kw)
    dm = ImageFolderDataModule(**settings)
    dm.setup("fit")
    return dm


def _every_fit_sample(dm: ImageFolderDataModule) -> list[Any]:
    """Load every sample of the training and validation sets, in order."""
    sets = (dm.train_set, dm.val_set)
    return [ds[i] for ds in sets for i in range(len(ds))]  # type: ignore[arg-type,index]


def _red(images: Tensor) -> Tensor:
    """``(..., H, W)`` bool: pixels that are pure red in ``(..., 3, H, W)`` images."""
    return (images[..., 0, :, :] == 1) & (images[..., 1, :, :] == 0) & (images[..., 2, :, :] == 0)


def _assert_aligned(images: Tensor, masks: Tensor) -> bool:
    """Assert mask == red pixels; return whether there was any object to check."""
    assert masks.dtype == torch.bool and masks.shape == images[..., 0, :, :].shape
    assert torch.equal(masks, _red(images))
    return bool(masks.any())


# --------------------------------------------------------------- the transform
def test_mask_follows_a_random_resized_crop_and_flip_exactly_and_the_image_is_unchanged(
    tmp_path,
):
    _write_pair(tmp_path / "i.png", tmp_path / "m.png", index=5, size=(48, 40))
    image, mask = Image.open(tmp_path / "i.png").convert("RGB"), load_mask(tmp_path / "m.png")
    crop = T.RandomResizedCrop(32, scale=(0.2, 1.0), interpolation=T.InterpolationMode.NEAREST)
    flipping = T.Compose([crop, T.RandomHorizontalFlip(0.5), T.ToTensor()])
    still = T.Compose([crop, T.ToTensor()])
    paired = ImageMaskTransform(flipping)
    flipped = with_object = 0
    for seed in range(30):
        torch.manual_seed(seed)
        x, m = paired(image, mask)
        with_object += _assert_aligned(x, m)
        torch.manual_seed(seed)
        assert torch.equal(x, flipping(image))  # same draws, same image as without the mask
        torch.manual_seed(seed)
        flipped += not torch.equal(x, still(image))
    assert 0 < flipped < 30  # both branches of the flip were exercised
    assert with_object > 15  # most crops hold part of the object: the check is not vacuous


@pytest.mark.parametrize("interpolation", ["bicubic", "nearest"])
def test_library_transforms_give_the_same_image_with_and_without_a_mask(tmp_path, interpolation):
    _write_pair(tmp_path / "i.png", tmp_path / "m.png", index=2, size=(45, 37))
    image, mask = Image.open(tmp_path / "i.png").convert("RGB"), load_mask(tmp_path / "m.png")
    for tf in (eval_transform(32, interpolation), train_transform(32, interpolation, True)):
        torch.manual_seed(1)
        x, m = ImageMaskTransform(tf)(image, mask)
        torch.manual_seed(1)
        assert torch.equal(x, tf(image)) and m.shape == (32, 32)
        if interpolation == "nearest":
            assert _assert_aligned(x, m)


def test_a_step_masks_cannot_follow_is_refused_by_name():
    with pytest.raises(ValueError, match="ColorJitter"):
        ImageMaskTransform(T.Compose([T.Resize(32), T.ColorJitter(0.1), T.ToTensor()]))


def test_mask_files_of_every_single_channel_mode_read_nonzero_as_object(tmp_path):
    values = np.array([[0, 1, 2], [255, 0, 7]], dtype=np.uint8)
    expected = values != 0
    palette = Image.fromarray(values, mode="P")
    palette.putpalette([0, 0, 0] * 256)  # colours are irrelevant: indices decide
    palette.save(tmp_path / "p.png")
    Image.fromarray(values).save(tmp_path / "l.png")
    Image.fromarray(expected).convert("1").save(tmp_path / "one.png")
    Image.fromarray(values.astype(np.uint16) * 300).save(tmp_path / "i16.png")
    for name in ("p", "l", "one", "i16"):
        assert np.array_equal(np.array(load_mask(tmp_path / f"{name}.png")) == 255, expected)
    Image.new("RGB", (3, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(ObjectMaskError, match=r"rgb\.png.*'RGB'.*single-channel"):
        load_mask(tmp_path / "rgb.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(CorruptImageError, match=r"object mask .*bad\.png"):
        load_mask(tmp_path / "bad.png")


def test_mask_path_mirrors_the_image_path_with_a_png_suffix():
    assert mask_path(Path("/d/train/cat/a.b.JPEG"), Path("/d"), Path("/m")) == Path(
        "/m/train/cat/a.b.png"
    )


# ------------------------------------------------------------- the datamodule
def test_every_id_batch_carries_masks_aligned_with_its_images_and_ood_batches_do_not(
    masked_root,
):
    dm = _module(masked_root, augment=True)
    torch.manual_seed(0)
    train = list(dm.train_dataloader())
    assert len(train) == 3  # (18 - 3 held out) // 4, last batch dropped
    for images, targets, masks in train:
        assert images.shape == (4, 3, 32, 32) and targets.shape == (4,)
        assert _assert_aligned(images, masks)
    for images, _, masks in dm.val_dataloader():  # carved from train
        assert _assert_aligned(images, masks)
    dm.setup("test")
    id_loader, ood_loader = dm.test_dataloader()
    for images, _, masks in id_loader:  # the test folder's own masks
        assert _assert_aligned(images, masks)
    assert all(len(batch) == 2 for batch in ood_loader)


def test_carved_test_split_keeps_its_masks(tmp_path):
    _make(tmp_path / "mine", tmp_path / "mine_masks", "train", 6)
    dm = _module(tmp_path, ood_roots={}, test_size=3)
    dm.setup("test")
    (loader,) = dm.test_dataloader()
    batches = list(loader)
    assert sum(len(b[0]) for b in batches) == 3
    for images, _, masks in batches:
        assert _assert_aligned(images, masks)


def test_without_masks_root_nothing_changes(masked_root):
    with_masks = _module(masked_root)
    plain = _module(masked_root, masks_root=None)
    assert plain.train_set is not None and with_masks.train_set is not None
    for i in range(len(plain.train_set)):
        image, target = plain.train_set[i]
        m_image, m_target, _ = with_masks.train_set[i]
        assert torch.equal(image, m_image) and target == m_target
    assert all(len(batch) == 2 for batch in plain.val_dataloader())


def test_missing_masks_are_all_counted_at_setup_naming_image_and_expected_path(masked_root):
    masks = masked_root / "mine_masks"
    (masks / "train" / "dog" / "img3.png").unlink()
    (masks / "test" / "cat" / "img1.png").rename(masks / "test" / "cat" / "img1.jpg")
    dm = ImageFolderDataModule(
        root=str(masked_root / "mine"), masks_root=str(masks), image_size=32, num_workers=0
    )
    with pytest.raises(DataLayoutError) as err:
        dm.setup("fit")
    text = str(err.value)
    assert "2 of 24 images have no object mask" in text
    image = masked_root / "mine" / "train" / "dog" / "img3.png"
    assert f"{image} -> {masks / 'train' / 'dog' / 'img3.png'}" in text
    assert str(masks / "test" / "cat" / "img1.png") in text
    assert "must be .png files; found" in text and "img1.jpg" in text


def test_a_mask_of_another_size_is_refused_naming_both_files(masked_root):
    bad = masked_root / "mine_masks" / "train" / "cat" / "img2.png"
    Image.new("L", (20, 18), 255).save(bad)
    dm = _module(masked_root, val_size=0.2, ood_roots={})
    with pytest.raises(ObjectMaskError, match=r"img2\.png is 20x18 px but its image .*40x36"):
        _every_fit_sample(dm)


def test_skip_corrupt_skips_and_reports_an_undecodable_mask(masked_root):
    (masked_root / "mine_masks" / "train" / "cat" / "img0.png").write_bytes(b"broken")
    dm = _module(masked_root, skip_corrupt=True, val_size=0.2)
    items = _every_fit_sample(dm)
    assert sum(item is None for item in items) == 1 and len(items) == 18
    skipped = [path for paths in dm.skipped_images().values() for path in paths]
    assert skipped == [str(masked_root / "mine" / "train" / "cat" / "img0.png")]
    with pytest.raises(CorruptImageError, match=r"object mask .*img0\.png"):
        _every_fit_sample(_module(masked_root, val_size=0.2))


def test_masks_root_must_exist_and_lie_outside_the_images(masked_root):
    with pytest.raises(DataLayoutError, match=r"masks_root: directory not found: .*nowhere"):
        _module(masked_root, masks_root=str(masked_root / "nowhere"))
    inside = masked_root / "mine" / "train" / "cat" / "masks"
    inside.mkdir()
    with pytest.raises(DataLayoutError, match="would be read as images"):
        _module(masked_root, masks_root=str(inside))


def test_a_part_folder_outside_root_cannot_be_mirrored(masked_root):
    _make(masked_root / "elsewhere", masked_root / "unused", "val", 1)
    with pytest.raises(DataLayoutError, match=r"the val folder .*elsewhere.* is not below"):
        _module(masked_root, val_dir=str(masked_root / "elsewhere" / "val"))


def test_two_images_sharing_one_mask_are_refused(masked_root):
    _write_pair(masked_root / "mine" / "train" / "cat" / "img0.jpg", None, 0)
    with pytest.raises(DataLayoutError, match=r"several images.*img0\.(png|jpg)"):
        _module(masked_root)


def test_masks_root_is_expanded_like_the_other_roots(masked_root, monkeypatch):
    monkeypatch.setenv("MASKS_HOME", str(masked_root))
    dm = _module(masked_root, masks_root="$MASKS_HOME/mine_masks")
    assert dm.train_set is not None and len(dm.train_set[0]) == 3  # type: ignore[arg-type]


# ------------------------------------------------------- cache, resumable loader
def test_cached_evaluation_sets_serve_the_same_images_and_masks(masked_root):
    plain = _module(masked_root)
    cached = _module(masked_root, cache_dir=str(masked_root / "cache"))
    plain.setup("test")
    cached.setup("test")
    pairs = [
        (plain.val_set, cached.val_set),
        *zip(plain.test_sets.values(), cached.test_sets.values(), strict=True),
    ]
    for ref, hit in pairs:
        assert type(hit).__name__ == "CachedImageDataset"
        for i in range(len(ref)):  # type: ignore[arg-type]
            a, b = ref[i], hit[i]  # type: ignore[index]
            assert len(a) == len(b)
            assert all(
                torch.equal(torch.as_tensor(u), torch.as_tensor(v))
                for u, v in zip(a, b, strict=True)
            )
    no_masks = _module(masked_root, masks_root=None, cache_dir=str(masked_root / "cache"))
    assert len(no_masks.val_set[0]) == 2  # type: ignore[index]
    assert len(list((masked_root / "cache").iterdir())) == 5  # val, id and ood: 2 + 2 + 1


def test_resumed_training_loader_continues_with_the_same_images_and_masks(masked_root):
    first = _module(masked_root).train_dataloader()
    it = iter(first)
    next(it)
    state = first.state_dict()  # type: ignore[attr-defined]
    rest = list(it)
    again = _module(masked_root).train_dataloader()
    again.load_state_dict(state)  # type: ignore[attr-defined]
    resumed = list(again)
    assert len(resumed) == len(rest) == 2
    for a, b in zip(rest, resumed, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


# --------------------------------------------------------------- training
class _Record(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[Tensor, Tensor]] = []

    def on_train_batch_end(  # type: ignore[override]
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.seen.append((batch[2].detach().clone(), outputs["mask"]))


def test_segmentation_masker_trains_and_tests_on_the_folder_masks(masked_root, tiny_timm_config):
    from cfmask import CounterfactualFineTuner
    from cfmask.backbones import TimmViT
    from cfmask.masking import SegmentationMasker
    from cfmask.testing import quiet_trainer

    dm = ImageFolderDataModule(
        root=str(masked_root / "mine"),
        masks_root=str(masked_root / "mine_masks"),
        ood_roots={"ood": str(masked_root / "ood")},
        image_size=32,
        batch_size=4,
        num_workers=0,
        val_size=3,
        augment=True,
    )
    model = CounterfactualFineTuner(TimmViT(**tiny_timm_config), masker=SegmentationMasker())
    record = _Record()
    trainer = quiet_trainer(
        masked_root / "run", max_steps=2, enable_checkpointing=False, callbacks=[record]
    )
    trainer.fit(model, datamodule=dm)
    assert len(record.seen) == 2
    for masks, patch_mask in record.seen:
        # Independent re-computation: a patch (8 x 8 px of the 32-px crop) is masked
        # when at least half of its pixels are object.
        coverage = masks.float().reshape(4, 4, 8, 4, 8).mean(dim=(2, 4)).reshape(4, 16)
        assert torch.equal(patch_mask, coverage >= 0.5)
        assert patch_mask.any()
    trainer.test(model, datamodule=dm, verbose=False)
    assert set(model.test_results) == {"id", "ood", "ood_avg"}


def test_the_example_masks_config_trains_the_exact_mask_masker_through_the_cli(masked_root):
    from cfmask.cli import main
    from cfmask.training.finetuner import CounterfactualFineTuner

    repo = Path(__file__).resolve().parents[2]
    run = masked_root / "cli"
    main(
        [
            "fit",
            "-c",
            str(repo / "tests" / "conf" / "tiny_fit.yaml"),
            "-c",
            str(repo / "examples" / "configs" / "method" / "ours_single_fill.yaml"),
            "-c",
            str(repo / "examples" / "configs" / "data" / "image_folder_masks.yaml"),
            f"--data.init_args.root={masked_root / 'mine'}",
            f"--data.init_args.masks_root={masked_root / 'mine_masks'}",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--data.init_args.val_size=10",  # 8 training images: one epoch, then validation
            f"--trainer.default_root_dir={run}",
            # The CAM-mask check of docs/concepts.md, appended as documented.
            "--trainer.callbacks+=cfmask.training.callbacks.MaskQualityMonitor",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={run / 'logs'}",
        ]
    )
    checkpoints = sorted(run.rglob("*.ckpt"))  # the best one (validated) and last.ckpt
    assert len(checkpoints) == 2
    model = CounterfactualFineTuner.load_from_checkpoint(checkpoints[0])
    assert type(model.masker).__name__ == "SegmentationMasker"
    assert model.objective.relevance is None
    # The monitor measured the CAM of a run that masks without one, from the folder masks.
    (metrics,) = (run / "logs").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    for t in ("0.3", "0.4", "0.5", "0.6"):
        assert f"mask_quality/t={t}/iou" in header

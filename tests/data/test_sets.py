"""Dataset layouts, label remaps and every bad-input case."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from _fake_trees import make_folder_set, make_objectnet
from PIL import Image

from cfmask.data import (
    CorruptImageError,
    DataLayoutError,
    DataLayoutWarning,
    ImageNet,
    ImageNetA,
    ImageNetR,
    ImageNetSketch,
    ImageNetV2,
    ObjectNet,
    TruncatedDatasetWarning,
    eval_transform,
    imagenet_a_wnids,
    imagenet_class_names,
    imagenet_r_wnids,
    imagenet_wnids,
)
from cfmask.data.folder import SkipLog
from cfmask.data.ood import crop_border

pytestmark = pytest.mark.filterwarnings("ignore::cfmask.data.DataLayoutWarning")


def test_metadata_lists() -> None:
    w = imagenet_wnids()
    assert len(w) == 1000 and list(w) == sorted(w) and len(set(w)) == 1000
    assert imagenet_class_names() == tuple(open_clip.IMAGENET_CLASSNAMES)
    idx = {x: i for i, x in enumerate(w)}
    r = [idx[x] for x in imagenet_r_wnids()]
    a = [idx[x] for x in imagenet_a_wnids()]
    assert len(r) == len(a) == 200
    # First entries of the published 200-class index lists (WiSE-FT / RF).
    assert r[:8] == [1, 2, 4, 6, 8, 9, 11, 13] and r[-2:] == [983, 988]
    assert a[:8] == [6, 11, 13, 15, 17, 22, 23, 27] and a[-3:] == [986, 987, 988]


def test_imagenet_val(data_root: Path) -> None:
    ds = ImageNet(data_root / "imagenet", "val")
    assert len(ds) == 1000 and ds.truncated
    assert ds.targets[:3] == [0, 1, 2]
    assert ds.samples[5].path.parent.name == imagenet_wnids()[5]
    assert ds[5][1] == 5


def test_imagenet_v2_remap(data_root: Path) -> None:
    ds = ImageNetV2(data_root / "imagenetv2-matched-frequency-format-val")
    # Lexicographic folder order 0, 1, 10, 100, 101, ... ; targets are the folder numbers.
    assert ds.folders[:4] == ["0", "1", "10", "100"]
    assert ds.targets[:4] == [0, 1, 10, 100]
    by_folder = {s.path.parent.name: ds.targets[s.class_index] for s in ds.samples}
    assert by_folder["10"] == 10 and by_folder["999"] == 999 and by_folder["2"] == 2
    _, y = ds[2]
    assert y == 10


@pytest.mark.parametrize("cls,folder", [(ImageNetR, "imagenet-r"), (ImageNetA, "imagenet-a")])
def test_200_class_subsets(data_root: Path, cls, folder) -> None:
    ds = cls(data_root / folder, transform=eval_transform(8))
    wnids = imagenet_r_wnids() if cls is ImageNetR else imagenet_a_wnids()
    idx = {x: i for i, x in enumerate(imagenet_wnids())}
    assert ds.class_subset is not None
    assert ds.class_subset.tolist() == sorted(idx[w] for w in wnids)
    # sample from folder k has the ImageNet index of that wnid, not k
    x, y = ds[1]
    assert y == idx[wnids[1]] and x.shape == (3, 8, 8)


def test_sketch_all_classes(data_root: Path) -> None:
    ds = ImageNetSketch(data_root / "sketch")
    assert ds.class_subset is None and len(ds) == 1000 and ds[999][1] == 999


def test_objectnet_mapping_and_border(data_root: Path) -> None:
    with pytest.warns(DataLayoutWarning, match="2 ObjectNet|4 ObjectNet classes"):
        ds = ObjectNet(data_root / "objectnet-1.0", transform=None)
    # only the 4 mapped folders, sorted; 2 images each
    assert ds.folders == ["alarm_clock", "banana", "bicycle", "chair_x"]
    assert len(ds) == 8 and ds.num_images_all == 12
    # hand-computed via the inverse of torch t -> ILSVRC (7t+3) mod 1000
    assert ds.mapping.folder_to_imagenet == {
        "alarm_clock": [409, 530],
        "banana": [954],
        "bicycle": [444, 671],
        "chair_x": [423],
    }
    assert ds.class_subset is not None
    assert ds.class_subset.tolist() == [409, 423, 444, 530, 671, 954]
    img, target = ds[0]
    assert target.dtype == torch.bool and target.shape == (1000,)
    assert target.nonzero().squeeze(1).tolist() == [409, 530]
    # 16x12 with a 2-px red border -> 12x8, all blue
    assert img.size == (12, 8)
    r, _, b = img.getpixel((0, 0))
    assert b > 200 and r < 60


def test_crop_border_exact() -> None:
    img = Image.new("RGB", (10, 10), (255, 0, 0))
    img.paste(Image.new("RGB", (6, 6), (0, 0, 255)), (2, 2))
    out = crop_border(img)
    assert out.size == (6, 6)
    assert out.getcolors() == [(36, (0, 0, 255))]


# ---------------------------------------------------------------- bad input


def test_missing_directory_names_set_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError) as e:
        ImageNetR(tmp_path / "nope")
    msg = str(e.value)
    assert "imagenet_r" in msg and str(tmp_path / "nope") in msg and "200" in msg


def test_missing_imagenet_split(tmp_path: Path) -> None:
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match=r"val_in_folder.*Expected layout"):
        ImageNet(tmp_path / "imagenet", "val")


def test_wrong_class_count(tmp_path: Path) -> None:
    make_folder_set(tmp_path / "r", imagenet_r_wnids()[:199])
    with pytest.raises(DataLayoutError, match=r"found 199 class folders.*expected 200.*missing"):
        ImageNetR(tmp_path / "r")


def test_unknown_wnid(tmp_path: Path) -> None:
    make_folder_set(tmp_path / "a", [*imagenet_a_wnids()[:199], "n99999999"])
    with pytest.raises(DataLayoutError, match="not ImageNet-1k wnids: n99999999"):
        ImageNetA(tmp_path / "a")


def test_in_wnid_but_not_in_subset(tmp_path: Path) -> None:
    wn = imagenet_wnids()
    other = next(w for w in wn if w not in imagenet_r_wnids())
    make_folder_set(tmp_path / "r", [*imagenet_r_wnids()[:199], other])
    with pytest.raises(DataLayoutError, match=f"not part of this set: {other}"):
        ImageNetR(tmp_path / "r")


def test_v2_out_of_range(tmp_path: Path) -> None:
    make_folder_set(tmp_path / "v2", [*range(999), 1000])
    with pytest.raises(DataLayoutError, match=r"out of range 0-999.*1000"):
        ImageNetV2(tmp_path / "v2")


def test_v2_wrong_count_and_wnid_folders(tmp_path: Path) -> None:
    make_folder_set(tmp_path / "v2", range(998))
    with pytest.raises(DataLayoutError, match="found 998 class folders"):
        ImageNetV2(tmp_path / "v2")
    make_folder_set(tmp_path / "v2b", imagenet_wnids()[:3])
    with pytest.raises(DataLayoutError, match="must be numeric"):
        ImageNetV2(tmp_path / "v2b")


@pytest.mark.parametrize(
    "missing", ["pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2"]
)
def test_objectnet_missing_mapping(tmp_path: Path, missing: str) -> None:
    base = make_objectnet(tmp_path)
    (base / "mappings" / missing).unlink()
    with pytest.raises(DataLayoutError, match=f"mapping file.*{missing}.*nothing is downloaded"):
        ObjectNet(base)


def test_objectnet_bad_name_and_unknown_folder(tmp_path: Path) -> None:
    base = make_objectnet(tmp_path)
    m = base / "mappings" / "objectnet_to_imagenet_1k.json"
    m.write_text(json.dumps({"Banana": "no such name"}))
    with pytest.raises(DataLayoutError, match="'no such name'"):
        ObjectNet(base)
    base2 = make_objectnet(tmp_path / "b")
    (base2 / "images" / "stray").mkdir()
    with pytest.raises(DataLayoutError, match="stray"):
        ObjectNet(base2)


def test_truncated_set_warns(data_root: Path) -> None:
    ds = ImageNetR(data_root / "imagenet-r")
    with pytest.warns(TruncatedDatasetWarning, match=r"found 200 images.*30,000.*NOT comparable"):
        ds.check_count()


def test_corrupt_image_error_and_skip(tmp_path: Path) -> None:
    make_folder_set(tmp_path / "r", imagenet_r_wnids())
    bad = tmp_path / "r" / imagenet_r_wnids()[3] / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    ds = ImageNetR(tmp_path / "r", transform=eval_transform(8))
    i = next(k for k, s in enumerate(ds.samples) if s.path == bad)
    with pytest.raises(CorruptImageError, match=r"imagenet_r.*broken\.jpg.*skip_corrupt"):
        ds[i]
    log = SkipLog(tmp_path / "skipped.txt")
    ds2 = ImageNetR(tmp_path / "r", transform=eval_transform(8), skip_corrupt=True, skip_log=log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds2[i] is None
        assert ds2[i] is None
    assert log.read() == [str(bad)]


def test_wrong_layout_copy_does_not_mislabel(data_root: Path, tmp_path: Path) -> None:
    # An IN-V2 tree mistakenly renamed with wnids is rejected, not silently mislabelled.
    shutil.copytree(data_root / "imagenet-r", tmp_path / "v2")
    with pytest.raises(DataLayoutError):
        ImageNetV2(tmp_path / "v2")

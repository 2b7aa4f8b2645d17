"""Writers of fake data trees in every supported layout (tiny files, no binaries in git)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

# The ID test set and the five OOD sets, in the order of the paper's tables (and of the
# datamodule's test loaders and `cfmask data check`).
TEST_SETS = ("imagenet", "imagenet_v2", "imagenet_r", "imagenet_sketch", "objectnet", "imagenet_a")

# ObjectNet fake: torch class index t <-> ILSVRC id (7 t + 3) mod 1000 (not the identity).
OBJECTNET_FOLDERS = {
    "air_freshener": "Air freshener",
    "alarm_clock": "Alarm clock",
    "banana": "Banana",
    "bicycle": "Bicycle",
    "chair_x": "Chair",
    "unmapped_thing": "Unmapped",
}
# label -> ILSVRC line ids; torch ids by hand: 866->409, 713->530, 681->954, 700->671,
# 111->444, 964->423.
OBJECTNET_TO_ILSVRC = {
    "Alarm clock": [866, 713],
    "Banana": [681],
    "Bicycle": [700, 111],
    "Chair": [964],
}


def write_image(path: Path, size: tuple[int, int] = (12, 10), color=(120, 60, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=90)


def write_bordered(path: Path, size: tuple[int, int] = (16, 12)) -> None:
    """An image with a 2-px red border around a blue centre."""
    img = Image.new("RGB", size, (255, 0, 0))
    img.paste(Image.new("RGB", (size[0] - 4, size[1] - 4), (0, 0, 255)), (2, 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_folder_set(root: Path, folders, per_class: int = 1, ext: str = ".JPEG") -> None:
    for f in folders:
        for i in range(per_class):
            write_image(root / str(f) / f"img{i}{ext}")


def make_objectnet(root: Path) -> Path:
    base = root / "objectnet-1.0"
    for folder in OBJECTNET_FOLDERS:
        for i in range(2):
            write_bordered(base / "images" / folder / f"{i}.png")
    maps = base / "mappings"
    maps.mkdir(parents=True)
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(OBJECTNET_FOLDERS))
    (maps / "objectnet_to_imagenet_1k.json").write_text(
        json.dumps(
            {k: "; ".join(f"ilsvrc name {j}" for j in v) for k, v in OBJECTNET_TO_ILSVRC.items()}
        )
    )
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(
        json.dumps({str(t): (7 * t + 3) % 1000 for t in range(1000)})
    )
    (maps / "imagenet_to_label_2012_v2").write_text(
        "".join(f"ilsvrc name {j}\n" for j in range(1000))
    )
    return base

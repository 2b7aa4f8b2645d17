"""The "Shifted Fashion-MNIST" benchmark: real garments composited onto textured backgrounds.

The benchmark mirrors the setting of Xiao et al. (CVPR 2023, arXiv:2303.03052) on
a laptop scale. Each image is a Fashion-MNIST garment (the object, the stationary
semantic factor ``S``) pasted onto a procedurally drawn background (the context,
the domain factor ``D``). Because the demo composites the two itself, the exact
pixel mask of the object is known for every image.

* **Pre-training pool** (the analogue of CLIP's broad data): background family
  drawn independently of the class, so a model trained on it learns the garment.
* **Fine-tuning data** (the target task): the background family equals a
  class-specific family with probability ``cue_strength``, a spurious shortcut.
* **ID test**: fresh garments from the official test split, same process.
* **Five OOD sets**, one per shift of the paper (see :data:`TEST_SET_DOCS`).

The IDX files are read by :func:`read_idx` (gzip + numpy); nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

__all__ = (
    "CLASS_NAMES",
    "DEBIAN_DIR",
    "ID_FAMILIES",
    "TEST_SET_DOCS",
    "UNSEEN_FAMILIES",
    "Benchmark",
    "BenchmarkConfig",
    "DatasetNotFoundError",
    "ImageSet",
    "PoolConfig",
    "RawData",
    "build_benchmark",
    "build_pretrain_pool",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "pool_indices",
    "read_idx",
    "render_backgrounds",
)

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Background families of pre-training and fine-tuning; family ``k`` is the cue of class ``k``.
ID_FAMILIES = (
    "solid",
    "h-stripes",
    "v-stripes",
    "diagonal",
    "checker",
    "dots",
    "grid",
    "gradient",
    "rings",
    "speckle",
)
#: Background families that no model sees before the ObjectNet-like test set.
UNSEEN_FAMILIES = ("zigzag", "crosshatch", "blobs", "waves")

#: What each test set is, and which shift of the paper it mirrors (one line per set).
TEST_SET_DOCS: dict[str, str] = {
    "id": "fine-tuning distribution on unseen test garments (cue agrees with the class "
    "with probability cue_strength) - the ImageNet validation set of the paper",
    "resample": "fresh garments re-sampled with the same recipe but a weaker cue "
    "(v2_cue_strength) and slightly smaller garments - like ImageNet-V2",
    "sketch": "edge map of the garment drawn in ink on plain paper: no texture, no "
    "background cue - like ImageNet-Sketch",
    "rendition": "garment painted in a random saturated colour instead of grey, on a "
    "background family drawn independently of the class - like ImageNet-R",
    "new-backgrounds": "backgrounds from four families never seen in pre-training or "
    "fine-tuning, random hue, wider garment scale range - like ObjectNet",
    "anti-cue": "every background is the cue family of a different class, so the "
    "shortcut always points to a wrong class - like ImageNet-A",
}

_INSTALL_HELP = """\
Fashion-MNIST was not found. The demo needs the four IDX files
  train-images-idx3-ubyte[.gz] train-labels-idx1-ubyte[.gz]
  t10k-images-idx3-ubyte[.gz]  t10k-labels-idx1-ubyte[.gz]
Searched: {searched}
Any one of these fixes it:
  1. Debian/Ubuntu (offline mirror or internet):
       sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist
     (installs the files into /usr/share/datasets/fashion-mnist, found automatically)
  2. With internet, let torchvision download them once:
       python -c "import torchvision; torchvision.datasets.FashionMNIST('data', download=True)"
     then run with --data-dir data   (the FashionMNIST/raw sub-folder is searched)
  3. Copy the files from anywhere into a folder and pass --data-dir FOLDER
     (or set CFMASK_DATA_DIR=FOLDER)."""


class DatasetNotFoundError(FileNotFoundError):
    """Raised when the Fashion-MNIST IDX files cannot be found; the message says how to fix it."""


def read_idx(path: str | os.PathLike[str]) -> NDArray[np.uint8]:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Args:
        path: File name; a ``.gz`` suffix means gzip.

    Returns:
        The array with the shape stored in the header.

    Raises:
        ValueError: If the header is not an unsigned-byte IDX header or the payload
            does not match the stored shape.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX data is supported, got type {raw[2]:#x}")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def _candidate_dirs(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    env = os.environ.get("CFMASK_DATA_DIR")
    if env:
        roots.append(Path(env))
    roots += [DEBIAN_DIR, Path.home() / ".cache" / "cfmask" / "fashion-mnist"]
    out: list[Path] = []
    for root in roots:
        out += [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    return out


def _files_in(folder: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for key, stem in _FILES.items():
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                found[key] = folder / name
                break
        else:
            return None
    return found


def _try_apt_install() -> bool:
    """Install Debian's package when running as root on a system with apt; return success."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    cmd = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    for attempt in range(2):
        if attempt == 1:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        if subprocess.run(cmd, capture_output=True, check=False).returncode == 0:
            return True
    return False


def find_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None, *, allow_install: bool = True
) -> dict[str, Path]:
    """Locate the four Fashion-MNIST IDX files.

    Searches ``data_dir`` (and its ``FashionMNIST/raw`` sub-folder, torchvision's
    layout), ``$CFMASK_DATA_DIR``, Debian's :data:`DEBIAN_DIR` and
    ``~/.cache/cfmask/fashion-mnist``. If nothing is found and the process runs as
    root on a system with ``apt-get``, installs ``dataset-fashion-mnist`` and looks again.

    Args:
        data_dir: Extra folder to search first.
        allow_install: Whether to try the apt install.

    Returns:
        Mapping ``train_images``, ``train_labels``, ``test_images``, ``test_labels`` to paths.

    Raises:
        DatasetNotFoundError: With instructions, when the files are nowhere.
    """
    candidates = _candidate_dirs(data_dir)
    for folder in candidates:
        files = _files_in(folder)
        if files is not None:
            return files
    if allow_install and _try_apt_install():
        files = _files_in(DEBIAN_DIR)
        if files is not None:
            return files
    searched = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise DatasetNotFoundError(_INSTALL_HELP.format(searched=searched))


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None, *, allow_install: bool = True
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    """Load Fashion-MNIST as numpy arrays.

    Args:
        data_dir: See :func:`find_fashion_mnist`.
        allow_install: See :func:`find_fashion_mnist`.

    Returns:
        ``(train_images (60000, 28, 28), train_labels, test_images (10000, 28, 28), test_labels)``.
    """
    files = find_fashion_mnist(data_dir, allow_install=allow_install)
    return (
        read_idx(files["train_images"]),
        read_idx(files["train_labels"]),
        read_idx(files["test_images"]),
        read_idx(files["test_labels"]),
    )


# ---------------------------------------------------------------------------
# Procedural backgrounds
# ---------------------------------------------------------------------------


def _hsv_to_rgb(
    h: NDArray[np.float64], s: NDArray[np.float64], v: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Vectorised HSV to RGB for arrays of shape ``(n,)``; returns ``(n, 3)``."""
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        0,
    )
    rgb: NDArray[np.float64] = table[i, np.arange(len(h))]
    return rgb


def _pattern(name: str, n: int, size: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Return ``(n, size, size)`` pattern weights in ``[0, 1]`` for one family."""
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    yy = yy[None].astype(np.float64)
    xx = xx[None].astype(np.float64)
    period = rng.uniform(4.0, 7.0, (n, 1, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1, 1))
    if name == "solid":
        return np.zeros((n, size, size))
    if name == "h-stripes":
        return (np.sin(2 * np.pi * yy / period + phase) > 0).astype(np.float64)
    if name == "v-stripes":
        return (np.sin(2 * np.pi * xx / period + phase) > 0).astype(np.float64)
    if name == "diagonal":
        return (np.sin(2 * np.pi * (xx + yy) / (1.4 * period) + phase) > 0).astype(np.float64)
    if name == "checker":
        cell = np.round(period / 2 + 0.5)
        off = rng.integers(0, 8, (n, 1, 1))
        return (((yy + off) // cell + (xx + off) // cell) % 2).astype(np.float64)
    if name == "dots":
        cy, cx = np.mod(yy + phase, period) - period / 2, np.mod(xx + phase, period) - period / 2
        return ((cy**2 + cx**2) < (period / 3.2) ** 2).astype(np.float64)
    if name == "grid":
        on = (np.mod(yy + phase, period) < 1.2) | (np.mod(xx + phase, period) < 1.2)
        return on.astype(np.float64)
    if name == "gradient":
        angle = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        g = (np.cos(angle) * xx + np.sin(angle) * yy) / size
        ramp: NDArray[np.float64] = np.clip(g - g.min(axis=(1, 2), keepdims=True), 0, 1)
        return ramp
    if name == "rings":
        cy, cx = rng.uniform(0, size, (n, 1, 1)), rng.uniform(0, size, (n, 1, 1))
        r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        return (np.sin(2 * np.pi * r / period + phase) > 0).astype(np.float64)
    if name == "speckle":
        return (rng.random((n, size, size)) < 0.35).astype(np.float64)
    if name == "zigzag":
        tri = np.abs(np.mod(xx / period + phase, 1.0) - 0.5) * period
        return (np.sin(2 * np.pi * (yy + tri) / period) > 0).astype(np.float64)
    if name == "crosshatch":
        a = np.mod(xx + yy + phase, period) < 1.2
        b = np.mod(xx - yy + phase, period) < 1.2
        return (a | b).astype(np.float64)
    if name == "blobs":
        coarse = rng.random((n, 1, 5, 5))
        up = F.interpolate(
            torch.from_numpy(coarse), size=(size, size), mode="bicubic", align_corners=False
        )
        return (up[:, 0].numpy() > 0.5).astype(np.float64)
    if name == "waves":
        bend = 2.5 * np.sin(2 * np.pi * xx / (2.5 * period) + phase)
        return (np.sin(2 * np.pi * (yy + bend) / period) > 0).astype(np.float64)
    raise ValueError(f"unknown background family {name!r}")


def render_backgrounds(
    families: Sequence[str] | NDArray[np.int64],
    rng: np.random.Generator,
    size: int = 32,
    *,
    random_hue: bool = False,
) -> NDArray[np.float32]:
    """Draw one background per entry of ``families``.

    Each ID family has its own hue (family ``k`` of :data:`ID_FAMILIES` is centred on
    hue ``k / 10``), so family is a texture-and-colour cue; the pattern mixes two
    shades of that hue with a random phase, period and saturation.

    Args:
        families: Family names, or integer indices into ``ID_FAMILIES + UNSEEN_FAMILIES``.
        rng: Random generator.
        size: Side in pixels.
        random_hue: Draw the hue uniformly instead of from the family.

    Returns:
        ``(n, 3, size, size)`` float32 in ``[0, 1]``.
    """
    all_fams = ID_FAMILIES + UNSEEN_FAMILIES
    names = [all_fams[int(f)] if not isinstance(f, str) else f for f in families]
    n = len(names)
    out = np.zeros((n, 3, size, size), dtype=np.float32)
    idx_of = {name: i for i, name in enumerate(all_fams)}
    hue = np.array([idx_of[m] / 10.0 for m in names]) + rng.uniform(-0.03, 0.03, n)
    if random_hue:
        hue = rng.random(n)
    hue = np.mod(hue, 1.0)
    sat = rng.uniform(0.55, 0.9, n)
    val_a = rng.uniform(0.55, 0.9, n)
    val_b = val_a * rng.uniform(0.35, 0.6, n)
    col_a = _hsv_to_rgb(hue, sat, val_a)
    col_b = _hsv_to_rgb(hue, sat, val_b)
    names_arr = np.array(names)
    for name in dict.fromkeys(names):
        sel = np.nonzero(names_arr == name)[0]
        w = _pattern(name, len(sel), size, rng)[:, None]
        img = col_a[sel][:, :, None, None] * (1 - w) + col_b[sel][:, :, None, None] * w
        img += rng.normal(0, 0.02, img.shape)
        out[sel] = np.clip(img, 0, 1).astype(np.float32)
    return out


# ---------------------------------------------------------------------------
# Compositing
# ---------------------------------------------------------------------------


def _place_garments(
    garments: NDArray[np.uint8],
    rng: np.random.Generator,
    size: int,
    scale: tuple[int, int],
) -> NDArray[np.float32]:
    """Resize each 28x28 garment to a random side in ``scale`` and paste it at a random spot.

    Returns:
        ``(n, size, size)`` garment intensity in ``[0, 1]`` (0 outside the garment).
    """
    n = len(garments)
    out = np.zeros((n, size, size), dtype=np.float32)
    sides = rng.integers(scale[0], scale[1] + 1, n)
    src = torch.from_numpy(garments.astype(np.float32) / 255.0)[:, None]
    for side in np.unique(sides):
        sel = np.nonzero(sides == side)[0]
        small = F.interpolate(src[sel], size=(int(side), int(side)), mode="area")[:, 0].numpy()
        for j, i in enumerate(sel):
            y, x = rng.integers(0, size - side + 1, 2)
            out[i, y : y + side, x : x + side] = small[j]
    return out


def _alpha(intensity: NDArray[np.float32]) -> NDArray[np.float32]:
    """Opacity of the garment: faint pixels are already mostly opaque."""
    alpha: NDArray[np.float32] = np.clip(intensity * 4.0, 0.0, 1.0).astype(np.float32)
    return alpha


def _edges(alpha: NDArray[np.float32], intensity: NDArray[np.float32]) -> NDArray[np.float32]:
    """Sobel edge strength of the garment (outline plus inner folds), in ``[0, 1]``."""
    t = torch.from_numpy(0.6 * alpha + 0.4 * intensity)[:, None]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    k = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), k)
    mag = g.pow(2).sum(1).sqrt()
    mag = mag / mag.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    return np.clip(mag.numpy() * 1.6, 0, 1).astype(np.float32)


@dataclass
class ImageSet:
    """A labelled set of composited images.

    Attributes:
        images: ``(n, 3, H, W)`` uint8.
        labels: ``(n,)`` int64 class indices.
        object_masks: ``(n, H, W)`` bool, ``True`` on garment pixels (exact by construction).
        families: ``(n,)`` int64 background family index (``-1`` for plain paper).
        description: What the set is.
    """

    images: Tensor
    labels: Tensor
    object_masks: Tensor
    families: Tensor
    description: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def float_images(self) -> Tensor:
        """Return the images as float32 in ``[0, 1]``."""
        return self.images.float().div_(255.0)

    def subset(self, n: int) -> ImageSet:
        """Return the first ``n`` items."""
        return ImageSet(
            self.images[:n],
            self.labels[:n],
            self.object_masks[:n],
            self.families[:n],
            self.description,
        )


class TensorImageDataset(Dataset[tuple[Tensor, ...]]):
    """Items of an :class:`ImageSet`: ``(image, label)`` or ``(image, label, object_mask)``.

    Images are float in ``[0, 1]``; with ``with_masks`` each item also carries its
    ``(H, W)`` bool garment mask, so batches are ``(images, targets, masks)``, the
    layout that :class:`~cfmask.masking.SegmentationMasker` and
    :class:`~cfmask.training.callbacks.MaskQualityMonitor` read.

    Args:
        images: The set.
        with_masks: Also yield the exact object masks.
    """

    def __init__(self, images: ImageSet, with_masks: bool = False) -> None:
        self.x = images.float_images()
        self.y = images.labels
        self.masks = images.object_masks if with_masks else None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        if self.masks is None:
            return self.x[i], self.y[i]
        return self.x[i], self.y[i], self.masks[i]


def _compose(
    garments: NDArray[np.uint8],
    labels: NDArray[np.uint8],
    rng: np.random.Generator,
    *,
    size: int,
    mode: str,
    style: str = "photo",
    cue_strength: float = 0.0,
    scale: tuple[int, int] = (20, 24),
    description: str = "",
) -> ImageSet:
    """Composite garments onto backgrounds.

    Args:
        garments: ``(n, 28, 28)`` Fashion-MNIST images.
        labels: ``(n,)`` classes.
        rng: Random generator.
        size: Canvas side.
        mode: Background choice: ``"cue"`` (class cue family with probability
            ``cue_strength``, otherwise uniform), ``"independent"`` (uniform over the ID
            families), ``"anti"`` (the cue family of another class), ``"unseen"`` (one of
            :data:`UNSEEN_FAMILIES`, random hue) or ``"paper"`` (plain off-white).
        style: How the garment is drawn: ``"photo"`` (its grey levels), ``"rendition"``
            (its shading painted in a random saturated colour) or ``"sketch"`` (ink edges).
        cue_strength: See ``mode``.
        scale: Range of the garment's side in pixels.
        description: Stored on the result.

    Returns:
        The composited :class:`ImageSet`.
    """
    n = len(garments)
    y = labels.astype(np.int64)
    k = len(ID_FAMILIES)
    intensity = _place_garments(garments, rng, size, scale)
    alpha = _alpha(intensity)
    if mode == "cue":
        fam = np.where(rng.random(n) < cue_strength, y, rng.integers(0, k, n))
    elif mode == "independent":
        fam = rng.integers(0, k, n)
    elif mode == "anti":
        fam = (y + rng.integers(1, k, n)) % k
    elif mode == "unseen":
        fam = k + rng.integers(0, len(UNSEEN_FAMILIES), n)
    elif mode == "paper":
        fam = np.full(n, -1)
    else:
        raise ValueError(f"unknown background mode {mode!r}")
    if mode == "paper":
        bg = rng.uniform(0.85, 1.0, (n, 1, 1, 1)) * np.ones((n, 3, size, size))
        bg = bg + rng.normal(0, 0.02, bg.shape)
    else:
        bg = render_backgrounds(fam, rng, size, random_hue=(mode == "unseen")).astype(np.float64)
    a = alpha[:, None]
    if style == "sketch":
        ink = _edges(alpha, intensity)[:, None]
        img = bg * (1 - ink) + 0.1 * ink
    elif style == "rendition":
        tint = _hsv_to_rgb(rng.random(n), rng.uniform(0.6, 1.0, n), np.ones(n))
        shade = intensity[:, None] * 0.8 + 0.2
        img = a * (shade * tint[:, :, None, None]) + (1 - a) * bg
    elif style == "photo":
        img = a * np.repeat(intensity[:, None], 3, axis=1) + (1 - a) * bg
    else:
        raise ValueError(f"unknown garment style {style!r}")
    img8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return ImageSet(
        images=torch.from_numpy(img8),
        labels=torch.from_numpy(y),
        object_masks=torch.from_numpy(alpha >= 0.5),
        families=torch.from_numpy(fam.astype(np.int64)),
        description=description,
    )


def _concat(parts: Sequence[ImageSet], rng: np.random.Generator, description: str) -> ImageSet:
    """Concatenate image sets and shuffle the result."""
    perm = torch.from_numpy(rng.permutation(sum(len(p) for p in parts)))
    return ImageSet(
        images=torch.cat([p.images for p in parts])[perm],
        labels=torch.cat([p.labels for p in parts])[perm],
        object_masks=torch.cat([p.object_masks for p in parts])[perm],
        families=torch.cat([p.families for p in parts])[perm],
        description=description,
    )


@dataclass(frozen=True)
class PoolConfig:
    """The pre-training pool: the pre-trained model's "broad" data.

    The pool is drawn from the official train split with its own seed, independent of
    the benchmark's data seed, so one pre-trained model serves every data seed: the
    fine-tuning and validation garments always come from the rest of the train split
    (see :func:`pool_indices`), and the test garments from the test split.

    Attributes:
        n_images: Images in the pool.
        sketch_fraction: Share of sketch-style images (ink edges on paper).
        rendition_fraction: Share of rendition-style images (garment painted in colour).
        scale: Range of the garment's side in pixels.
        image_size: Canvas side in pixels.
        seed: Seed of the garment choice and of the compositing.
    """

    n_images: int = 50000
    sketch_fraction: float = 0.15
    rendition_fraction: float = 0.15
    scale: tuple[int, int] = (18, 26)
    image_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class BenchmarkConfig:
    """Sizes and knobs of the benchmark (everything but the pre-training pool).

    Attributes:
        image_size: Canvas side in pixels.
        n_finetune: Fine-tuning training images (train-split garments outside the pool).
        n_val: ID validation images (same distribution as fine-tuning; used for every choice).
        n_test: Images per test set (ID and each OOD set). Each set draws its own
            ``n_test`` distinct garments from the test split, so when ``6 * n_test``
            exceeds the 10 000 test garments, two sets can show the same garment in
            different renderings; no test garment is ever seen in training.
        cue_strength: Probability that a fine-tuning image shows its class's cue family.
        v2_cue_strength: Cue strength of the re-sampled (ImageNet-V2-like) set.
        seed: The data seed: which garments, backgrounds and positions each split gets.
            The pre-training pool does not depend on it (see :class:`PoolConfig`).
    """

    image_size: int = 32
    n_finetune: int = 4000
    n_val: int = 1000
    n_test: int = 2000
    cue_strength: float = 0.9
    v2_cue_strength: float = 0.7
    seed: int = 0


@dataclass
class Benchmark:
    """All fine-tuning and evaluation splits of Shifted Fashion-MNIST.

    Attributes:
        config: How it was built.
        train: Fine-tuning training split (spurious cue).
        val: ID validation split (same distribution as ``train``).
        tests: ``"id"`` and the five OOD sets, in :data:`TEST_SET_DOCS` order.
    """

    config: BenchmarkConfig
    train: ImageSet
    val: ImageSet
    tests: dict[str, ImageSet] = field(default_factory=dict)

    @property
    def ood_names(self) -> list[str]:
        """Names of the OOD test sets."""
        return [k for k in self.tests if k != "id"]


RawData = tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]

#: Offset between a pool seed and the seed of its garment permutation, so that the
#: pool's choice of garments never coincides with a benchmark data seed's generator.
_POOL_SEED_OFFSET = 7_919


def pool_indices(n_train: int, pool: PoolConfig) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Split the train split into the pre-training pool and the rest.

    Args:
        n_train: Number of train-split garments (60 000 for Fashion-MNIST).
        pool: The pool's size and seed.

    Returns:
        ``(pool, rest)`` index arrays; ``rest`` is sorted, so the fine-tuning and
        validation splits depend only on the benchmark's data seed.

    Raises:
        ValueError: If the pool does not fit into the train split.
    """
    if not 0 < pool.n_images <= n_train:
        raise ValueError(
            f"the pre-training pool asks for {pool.n_images} garments but the train split "
            f"has {n_train}; lower PoolConfig.n_images"
        )
    perm = np.random.default_rng(_POOL_SEED_OFFSET + pool.seed).permutation(n_train)
    return perm[: pool.n_images], np.sort(perm[pool.n_images :])


def build_pretrain_pool(pool: PoolConfig, data: RawData, chunk: int = 10000) -> ImageSet:
    """Composite the pre-training pool.

    Mostly photos on class-independent backgrounds, plus sketches and renditions (as
    web-scale data holds drawings and art too). Built in chunks to bound memory.

    Args:
        pool: Size, style mix and seed.
        data: Raw Fashion-MNIST as from :func:`load_fashion_mnist`.
        chunk: Images composited at once.

    Returns:
        The pool, shuffled; deterministic given ``pool``.
    """
    tr_x, tr_y = data[0], data[1]
    idx, _ = pool_indices(len(tr_x), pool)
    rng = np.random.default_rng(pool.seed)
    n_sk = round(pool.sketch_fraction * len(idx))
    n_re = round(pool.rendition_fraction * len(idx))
    groups = (
        (idx[n_sk + n_re :], "independent", "photo"),
        (idx[:n_sk], "paper", "sketch"),
        (idx[n_sk : n_sk + n_re], "independent", "rendition"),
    )
    parts: list[ImageSet] = []
    for sel, mode, style in groups:
        for start in range(0, len(sel), chunk):
            part = sel[start : start + chunk]
            parts.append(
                _compose(
                    tr_x[part],
                    tr_y[part],
                    rng,
                    size=pool.image_size,
                    mode=mode,
                    style=style,
                    scale=pool.scale,
                )
            )
    return _concat(parts, rng, "pre-training pool")


def build_benchmark(config: BenchmarkConfig, data: RawData, pool: PoolConfig) -> Benchmark:
    """Build the fine-tuning, validation and test splits from raw Fashion-MNIST arrays.

    Args:
        config: Sizes and knobs; ``config.seed`` is the data seed.
        data: ``(train_images, train_labels, test_images, test_labels)`` as from
            :func:`load_fashion_mnist`.
        pool: The pre-trained model's pool; its garments are never used here.

    Returns:
        The :class:`Benchmark`; deterministic given ``config`` and ``pool``.

    Raises:
        ValueError: If the requested sizes exceed what Fashion-MNIST holds.
    """
    tr_x, tr_y, te_x, te_y = data
    _, rest = pool_indices(len(tr_x), pool)
    need_train = config.n_finetune + config.n_val
    if need_train > len(rest) or config.n_test > len(te_x):
        raise ValueError(
            f"asked for {need_train} train-split garments outside the pre-training pool and "
            f"{config.n_test} test-split garments per test set, but Fashion-MNIST has "
            f"{len(rest)} (60 000 minus the pool's {pool.n_images}) and {len(te_x)}"
        )
    rng = np.random.default_rng(config.seed)
    ft_perm = rest[rng.permutation(len(rest))]
    ft_i, val_i = ft_perm[: config.n_finetune], ft_perm[config.n_finetune : need_train]
    s = config.image_size
    train = _compose(
        tr_x[ft_i],
        tr_y[ft_i],
        rng,
        size=s,
        mode="cue",
        cue_strength=config.cue_strength,
        description="fine-tuning train",
    )
    val = _compose(
        tr_x[val_i],
        tr_y[val_i],
        rng,
        size=s,
        mode="cue",
        cue_strength=config.cue_strength,
        description="ID validation",
    )
    recipes: dict[str, dict[str, Any]] = {
        "id": {"mode": "cue", "cue_strength": config.cue_strength},
        "resample": {"mode": "cue", "cue_strength": config.v2_cue_strength, "scale": (18, 22)},
        "sketch": {"mode": "paper", "style": "sketch"},
        "rendition": {"mode": "independent", "style": "rendition"},
        "new-backgrounds": {"mode": "unseen", "scale": (16, 26)},
        "anti-cue": {"mode": "anti"},
    }
    tests: dict[str, ImageSet] = {}
    for name, recipe in recipes.items():
        sel = rng.permutation(len(te_x))[: config.n_test]
        tests[name] = _compose(
            te_x[sel], te_y[sel], rng, size=s, description=TEST_SET_DOCS[name], **recipe
        )
    return Benchmark(config=config, train=train, val=val, tests=tests)

"""Loader throughput (images/s) on generated JPEGs, with and without the crop cache.

Generates ``--num-images`` random-texture JPEGs of ImageNet-like size (500x375)
in wnid-style class folders, then times full passes of the evaluation loader
(decode -> Resize(bicubic) -> CenterCrop -> tensor) for each worker count, and
of the same set served from the preprocessed uint8 crop cache.

``workers=0`` loads in the main process, so its rate is what one loader process
delivers; from it the script prints how many worker processes feed ``--target``
images/s (1,250 by default: a ViT-B/16 counterfactual step on one H100-class GPU).
It then splits one image's path into its stages (JPEG decode, bicubic resize,
centre crop to a float tensor) and times the alternatives that could raise the rate:
torchvision's libjpeg-turbo decoder (``torchvision.io.decode_jpeg``) instead of
Pillow's, and Pillow's ``reducing_gap`` resize.

    python benchmarks/data_loader_throughput.py --num-images 2000 --workers 0 2 8
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cfmask.data.cache import CachedImageDataset, build_cache, cache_path
from cfmask.data.folder import FolderImageDataset, collate_skipping
from cfmask.data.transforms import eval_transform


def generate(root: Path, n: int, classes: int = 10, size=(500, 375)) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        # smooth random texture so JPEG sizes are photo-like (~30-60 kB)
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        img.save(d / f"{i}.JPEG", quality=90)


def time_loader(ds, workers: int, batch_size: int, pin: bool) -> float:
    loader = DataLoader(
        ds, batch_size=batch_size, num_workers=workers, pin_memory=pin, collate_fn=collate_skipping
    )
    t0 = time.perf_counter()
    n = sum(b[0].shape[0] for b in loader)
    return n / (time.perf_counter() - t0)


def stage_times(files: list[Path], image_size: int) -> dict[str, float]:
    """Median milliseconds per image of each stage and alternative, in this process."""
    import torchvision.io as tvio
    import torchvision.transforms.functional as TF

    def ms(fn: Callable[[Path], object]) -> float:
        times = []
        for f in files:
            t0 = time.perf_counter()
            fn(f)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    def pil(f: Path) -> Image.Image:
        with Image.open(f) as im:
            return im.convert("RGB")

    decoded = {f: pil(f) for f in files}

    def short_side(im: Image.Image) -> tuple[int, int]:
        w, h = im.size
        return (
            (image_size, round(h * image_size / w))
            if w < h
            else (round(w * image_size / h), image_size)
        )

    bicubic = Image.Resampling.BICUBIC
    resized = {f: im.resize(short_side(im), bicubic) for f, im in decoded.items()}
    return {
        "decode (Pillow)": ms(pil),
        "decode (torchvision.io.decode_jpeg)": ms(
            lambda f: tvio.decode_jpeg(tvio.read_file(str(f)))
        ),
        "resize bicubic (Pillow)": ms(lambda f: decoded[f].resize(short_side(decoded[f]), bicubic)),
        "resize bicubic, reducing_gap=2 (Pillow)": ms(
            lambda f: decoded[f].resize(short_side(decoded[f]), bicubic, reducing_gap=2.0)
        ),
        "centre crop + to float tensor": ms(
            lambda f: TF.to_tensor(TF.center_crop(resized[f], [image_size, image_size]))
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--pin-memory", action="store_true")
    p.add_argument("--dir", type=Path, help="reuse/keep generated data here")
    p.add_argument("--target", type=float, default=1250.0, help="images/s the loader must feed")
    p.add_argument("--stage-images", type=int, default=200, help="images timed per stage")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the main process (workers always use 1; more threads "
        "oversubscribe small CPUs and make workers=0 look far slower)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory() if args.dir is None else None
    root = Path(tmp.name) if tmp is not None else args.dir
    images = root / "images"
    if not images.exists():
        t0 = time.perf_counter()
        generate(images, args.num_images)
        print(f"generated {args.num_images} JPEGs in {time.perf_counter() - t0:.1f}s")
    folders = sorted(d.name for d in images.iterdir())
    ds = FolderImageDataset(
        "bench",
        images,
        folders,
        list(range(len(folders))),
        transform=eval_transform(args.image_size),
    )
    print(
        f"{len(ds)} images, batch {args.batch_size}, {args.image_size}px, "
        f"pin_memory={args.pin_memory}"
    )
    folder_rate: dict[int, float] = {}
    for w in args.workers:
        ips = time_loader(ds, w, args.batch_size, args.pin_memory)
        folder_rate[w] = ips
        print(f"  JPEG decode+resize  workers={w:2d}: {ips:8.1f} images/s")
    cdir = cache_path(ds, root / "cache", args.image_size, "bicubic")
    t0 = time.perf_counter()
    build_cache(ds, cdir, args.image_size, num_workers=max(args.workers))
    mb = len(ds) * args.image_size**2 * 3 / 1e6
    print(f"  cache built in {time.perf_counter() - t0:.1f}s ({mb:.0f} MB)")
    cached = CachedImageDataset(ds, cdir)
    cache_rate: dict[int, float] = {}
    for w in args.workers:
        ips = time_loader(cached, w, args.batch_size, args.pin_memory)
        cache_rate[w] = ips
        print(f"  uint8 crop cache    workers={w:2d}: {ips:8.1f} images/s")
    for label, rates in (("JPEG folders", folder_rate), ("crop cache", cache_rate)):
        if 0 in rates:
            need = math.ceil(args.target / rates[0])
            print(
                f"  {label}: {rates[0]:.1f} images/s per loader process -> "
                f"{need} worker processes for {args.target:.0f} images/s"
            )
    files = sorted(images.rglob("*.JPEG"))[: args.stage_images]
    print(f"  per-image stages (median of {len(files)} images, this process):")
    for stage, ms in stage_times(files, args.image_size).items():
        print(f"    {stage:42s} {ms:6.2f} ms")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

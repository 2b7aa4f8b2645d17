"""Loader throughput (images/s) on generated JPEGs, with and without the crop cache.

Generates ``--num-images`` random-texture JPEGs of ImageNet-like size (500x375)
in wnid-style class folders, then times full passes of the evaluation loader
(decode -> Resize(bicubic) -> CenterCrop -> tensor) for each worker count, and
of the same set served from the preprocessed uint8 crop cache.

    python benchmarks/data_loader_throughput.py --num-images 2000 --workers 0 2 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--pin-memory", action="store_true")
    p.add_argument("--dir", type=Path, help="reuse/keep generated data here")
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
    for w in args.workers:
        ips = time_loader(ds, w, args.batch_size, args.pin_memory)
        print(f"  JPEG decode+resize  workers={w:2d}: {ips:8.1f} images/s")
    cdir = cache_path(ds, root / "cache", args.image_size, "bicubic")
    t0 = time.perf_counter()
    build_cache(ds, cdir, args.image_size, num_workers=max(args.workers))
    mb = len(ds) * args.image_size**2 * 3 / 1e6
    print(f"  cache built in {time.perf_counter() - t0:.1f}s ({mb:.0f} MB)")
    cached = CachedImageDataset(ds, cdir)
    for w in args.workers:
        ips = time_loader(cached, w, args.batch_size, args.pin_memory)
        print(f"  uint8 crop cache    workers={w:2d}: {ips:8.1f} images/s")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

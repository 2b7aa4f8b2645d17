"""The demo's shipped pre-trained model: file, recipe, hash and ``cfmask demo pretrain``.

The pre-trained model ("teacher", the analogue of CLIP) is trained once by
``cfmask demo pretrain`` (:func:`pretrain_main`) and shipped inside the package as
``cfmask/demo/assets/pretrained.safetensors`` next to ``pretrained.json``, which
holds the full recipe (:class:`~cfmask.demo.teacher.ModelConfig`,
:class:`~cfmask.demo.teacher.PretrainConfig`), the file's SHA-256, the figures the
command printed and the environment it ran in. The default ``cfmask demo`` loads
this file (after checking its hash) instead of paying for pre-training;
``cfmask demo --pretrain`` trains a fresh one with the same recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cfmask.backbones.timm_vit import TimmViT
from cfmask.demo.data import (
    BenchmarkConfig,
    PoolConfig,
    RawData,
    build_benchmark,
    build_pretrain_pool,
    load_fashion_mnist,
)
from cfmask.demo.teacher import ModelConfig, PretrainConfig, accuracy, pretrain_teacher

__all__ = (
    "SHIPPED_RECIPE",
    "SHIPPED_WEIGHTS",
    "PretrainedRecipe",
    "environment",
    "load_recipe",
    "pretrain_main",
    "save_pretrained",
    "sha256_file",
    "verify_pretrained",
)

#: Folder of the shipped files inside the package.
ASSET_DIR = Path(__file__).resolve().parent / "assets"
#: The shipped pre-trained weights (a timm state dict in safetensors format).
SHIPPED_WEIGHTS = ASSET_DIR / "pretrained.safetensors"
#: The shipped weights' recipe, hash and printed figures.
SHIPPED_RECIPE = ASSET_DIR / "pretrained.json"


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def environment(threads: int | None = None) -> dict[str, Any]:
    """Describe what can change the numbers: versions, threads, CPU capability, platform.

    Args:
        threads: The torch thread count the figures were computed with (defaults to
            the current ``torch.get_num_threads()``).

    Returns:
        A JSON-ready mapping.
    """
    import lightning
    import numpy

    import cfmask

    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # pragma: no cover - torch < 2.1
        capability = "unknown"
    return {
        "cfmask": cfmask.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads() if threads is None else threads,
        "cpu_capability": capability,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


@dataclasses.dataclass(frozen=True)
class PretrainedRecipe:
    """What ``pretrained.json`` holds.

    Attributes:
        model: Architecture.
        pretrain: Training recipe (pool, epochs, lr, seed, threads).
        sha256: SHA-256 of the weights file.
        figures: Zero-shot accuracies (%) the pre-training command printed.
        environment: Where it was trained (see :func:`environment`).
        seconds: Wall time of the training.
    """

    model: ModelConfig
    pretrain: PretrainConfig
    sha256: str
    figures: dict[str, Any]
    environment: dict[str, Any]
    seconds: float


def _recipe_json(recipe: PretrainedRecipe) -> dict[str, Any]:
    out = dataclasses.asdict(recipe)
    out["command"] = "cfmask demo pretrain --output FILE"
    return out


def load_recipe(path: str | Path = SHIPPED_RECIPE) -> PretrainedRecipe:
    """Read a recipe file written by :func:`save_pretrained`.

    Args:
        path: The JSON file.

    Returns:
        The recipe.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If it lacks a field.
    """
    raw = json.loads(Path(path).read_text())
    try:
        pre = dict(raw["pretrain"])
        pool = dict(pre.pop("pool"))
        pool["scale"] = tuple(pool["scale"])
        return PretrainedRecipe(
            model=ModelConfig(**raw["model"]),
            pretrain=PretrainConfig(pool=PoolConfig(**pool), **pre),
            sha256=str(raw["sha256"]),
            figures=dict(raw["figures"]),
            environment=dict(raw["environment"]),
            seconds=float(raw["seconds"]),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a pre-trained recipe file ({err})") from err


def save_pretrained(
    state: Mapping[str, Tensor],
    path: str | Path,
    model: ModelConfig,
    cfg: PretrainConfig,
    figures: Mapping[str, Any],
    seconds: float,
) -> Path:
    """Write the weights as safetensors and the recipe (with the file's hash) beside them.

    Args:
        state: The timm state dict.
        path: Weights file; must end in ``.safetensors``. The recipe goes to the same
            name with ``.json``.
        model: Architecture.
        cfg: Training recipe.
        figures: Zero-shot accuracies to record.
        seconds: Training wall time.

    Returns:
        The recipe file's path.

    Raises:
        ValueError: If ``path`` does not end in ``.safetensors``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"the weights file must end in .safetensors, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    recipe = PretrainedRecipe(
        model=model,
        pretrain=cfg,
        sha256=sha256_file(path),
        figures=dict(figures),
        environment=environment(cfg.threads),
        seconds=round(seconds, 1),
    )
    out = path.with_suffix(".json")
    out.write_text(json.dumps(_recipe_json(recipe), indent=2) + "\n")
    return out


def verify_pretrained(
    weights: str | Path = SHIPPED_WEIGHTS, recipe: str | Path | None = None
) -> PretrainedRecipe:
    """Check a weights file against its recipe's SHA-256 and return the recipe.

    Args:
        weights: The ``.safetensors`` file.
        recipe: Its recipe (defaults to the same name with ``.json``).

    Returns:
        The recipe.

    Raises:
        FileNotFoundError: If either file is missing.
        ValueError: If the hash differs.
    """
    weights = Path(weights)
    recipe_path = Path(recipe) if recipe is not None else weights.with_suffix(".json")
    for f in (weights, recipe_path):
        if not f.is_file():
            raise FileNotFoundError(
                f"{f} is missing; reinstall cfmask or rebuild it with "
                "`cfmask demo pretrain --output FILE.safetensors`"
            )
    rec = load_recipe(recipe_path)
    actual = sha256_file(weights)
    if actual != rec.sha256:
        raise ValueError(
            f"{weights} has SHA-256 {actual} but its recipe {recipe_path} says {rec.sha256}; "
            "the file was changed or truncated. Reinstall cfmask, or rebuild it with "
            "`cfmask demo pretrain`."
        )
    return rec


def zero_shot_figures(backbone: torch.nn.Module, data: RawData, pool: PoolConfig) -> dict[str, Any]:
    """Zero-shot accuracies (%) of a model on the default benchmark (data seed 0).

    Args:
        backbone: The model with its pre-training head.
        data: Raw Fashion-MNIST.
        pool: The pre-training pool (its garments are excluded from the splits).

    Returns:
        ``{"val", "id", "ood": {set: acc}, "ood_avg"}``.
    """
    bench = build_benchmark(BenchmarkConfig(), data, pool)
    ood = {k: accuracy(backbone, v) for k, v in bench.tests.items() if k != "id"}
    return {
        "val": accuracy(backbone, bench.val),
        "id": accuracy(backbone, bench.tests["id"]),
        "ood": ood,
        "ood_avg": sum(ood.values()) / len(ood),
    }


def _build_parser() -> argparse.ArgumentParser:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(
        prog="cfmask demo pretrain",
        description="Train the demo's pre-trained model with the shipped recipe (seeded; "
        "prints its zero-shot ID/OOD figures) and write FILE.safetensors + FILE.json.",
    )
    parser.add_argument("--output", type=Path, required=True, help="weights file (.safetensors)")
    parser.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST folder")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--pool-size", type=int, default=defaults.pool.n_images)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--width", type=int, default=None, help="embedding width (default 64)")
    parser.add_argument("--depth", type=int, default=None, help="transformer blocks (default 4)")
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--eval-every", type=int, default=4, help="print zero-shot figures every N epochs"
    )
    parser.add_argument(
        "--checkpoints",
        action="store_true",
        help="also save the weights at every evaluation as FILE.epochN.safetensors",
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get the data")
    return parser


def pretrain_main(argv: list[str] | None = None) -> int:
    """Entry point of ``cfmask demo pretrain --output FILE.safetensors``.

    Args:
        argv: Arguments after ``demo pretrain``.

    Returns:
        The exit status.
    """
    args = _build_parser().parse_args(argv)
    model = ModelConfig()
    kwargs = dict(model.model_kwargs)
    if args.width is not None:
        kwargs["embed_dim"] = args.width
    if args.depth is not None:
        kwargs["depth"] = args.depth
    model = dataclasses.replace(model, model_kwargs=kwargs)
    cfg = dataclasses.replace(
        PretrainConfig(),
        pool=dataclasses.replace(PoolConfig(), n_images=args.pool_size),
        epochs=args.epochs,
        lr=args.lr,
        threads=args.threads,
        seed=args.seed,
    )
    data = load_fashion_mnist(args.data_dir, allow_install=not args.no_install)
    pool = build_pretrain_pool(cfg.pool, data)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    print(f"pre-training on {len(pool)} images, {cfg.epochs} epochs, {cfg.threads} thread(s)")
    sys.stdout.flush()
    t0 = time.perf_counter()
    last: dict[str, Any] = {}

    def on_epoch(epoch: int, backbone: TimmViT) -> None:
        if epoch % max(1, args.eval_every) and epoch != cfg.epochs:
            return
        fig = zero_shot_figures(backbone, data, cfg.pool)
        if args.checkpoints:
            from safetensors.torch import save_file

            model_sd = backbone.model.state_dict()
            snap = {k: v.detach().cpu().contiguous() for k, v in model_sd.items()}
            save_file(snap, str(Path(args.output).with_suffix(f".epoch{epoch}.safetensors")))
        last.clear()
        last.update(fig)
        ood = "  ".join(f"{k} {v:.1f}" for k, v in fig["ood"].items())
        print(
            f"epoch {epoch}: zero-shot val {fig['val']:.1f}  ID {fig['id']:.1f}  "
            f"OOD avg {fig['ood_avg']:.1f}  ({ood})  {time.perf_counter() - t0:.0f} s"
        )
        sys.stdout.flush()

    state = pretrain_teacher(pool, model, cfg, on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    out = save_pretrained(state, args.output, model, cfg, last, seconds)
    print(f"wrote {args.output} and {out} ({seconds:.0f} s)")
    return 0

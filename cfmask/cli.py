"""The ``cfmask`` command line.

* ``cfmask fit | validate | test | predict`` — LightningCLI over
  :class:`~cfmask.CounterfactualFineTuner` and any LightningDataModule. Built-in
  components can be named by their class name (``--model.masker ObjectMasker``);
  any importable subclass works by its full ``class_path``; installed packages
  can register modules under the ``cfmask.plugins`` entry-point group so that
  their classes get short names too.
* ``cfmask wise CKPT --alpha ...`` — WiSE-FT interpolation checkpoints.
* ``cfmask soup CKPT CKPT ...`` — uniform model soup.
* ``cfmask demo`` — the offline benchmark.
* ``cfmask data check`` — validate a dataset layout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from cfmask.finetuner import CounterfactualFineTuner

__all__ = ("CfmaskCLI", "load_plugins", "main")

PLUGIN_GROUP = "cfmask.plugins"
_BUILTIN_MODULES = (
    "cfmask.backbones.openclip_vit",
    "cfmask.backbones.timm_vit",
    "cfmask.relevance",
    "cfmask.masking",
    "cfmask.losses",
    "cfmask.callbacks",
    "cfmask.synthetic",
    "cfmask.data",
)


def load_plugins() -> list[str]:
    """Import the built-in component modules and every ``cfmask.plugins`` entry point.

    Importing a module makes its ``Masker``/``Refiller``/... subclasses known to
    jsonargparse, so configs can name them by class name alone.

    Returns:
        The names of the entry points that were loaded.
    """
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as err:  # a broken plugin must not break the CLI
            warnings.warn(
                f"could not load cfmask plugin {ep.name!r} ({ep.value}): {err}",
                stacklevel=2,
            )
            continue
        loaded.append(ep.name)
    return loaded


class CfmaskCLI(LightningCLI):
    """LightningCLI with cfmask's defaults.

    Adds a ``checkpoint`` group (a :class:`~lightning.pytorch.callbacks.ModelCheckpoint`
    that keeps the best ``val/acc1`` and the last epoch, as the paper selects the
    checkpoint on the held-out split) and prints a results table after ``test``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Register the checkpoint callback with the paper's selection rule."""
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
            }
        )

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        # cfmask's results table replaces Lightning's per-dataloader table, which
        # repeats the epoch-level per-set metrics under every loader; `--verbose true`
        # brings it back.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("test", "validate"):
            parser.set_defaults({"verbose": False})
        return parser


def _wise(argv: Sequence[str]) -> int:
    from cfmask.ensembles import wise_checkpoints

    parser = argparse.ArgumentParser(
        prog="cfmask wise",
        description="Interpolate all weights (head included) between the zero-shot and "
        "a fine-tuned model: (1 - alpha) * theta_0 + alpha * theta_1 (WiSE-FT).",
    )
    parser.add_argument("checkpoint", help="fine-tuned cfmask .ckpt (theta_1)")
    parser.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        default=[0.5],
        help="one or more mixing coefficients in [0, 1] (default 0.5)",
    )
    parser.add_argument(
        "--zeroshot",
        default=None,
        help="zero-shot weights (theta_0); default: the initial teacher stored in the "
        "checkpoint, else the pre-trained model rebuilt from its config",
    )
    parser.add_argument("--output-dir", default="wise", help="folder for the new checkpoints")
    ns = parser.parse_args(list(argv))
    for path in wise_checkpoints(ns.checkpoint, ns.alpha, ns.output_dir, ns.zeroshot):
        print(path)
    return 0


def _soup(argv: Sequence[str]) -> int:
    from cfmask.ensembles import soup_checkpoint

    parser = argparse.ArgumentParser(
        prog="cfmask soup", description="Uniform average of fine-tuned checkpoints (model soup)."
    )
    parser.add_argument("checkpoints", nargs="+", help="two or more cfmask .ckpt files")
    parser.add_argument("--output", default="soup.ckpt", help="path of the soup checkpoint")
    ns = parser.parse_args(list(argv))
    print(soup_checkpoint(ns.checkpoints, ns.output))
    return 0


def _demo(argv: Sequence[str]) -> int:
    from cfmask.demo import main as demo_main

    return demo_main(list(argv))


def _data(argv: Sequence[str]) -> int:
    from cfmask.data.cli import data_command

    return data_command(list(argv))


_DESCRIPTION = (
    "Robust fine-tuning with counterfactual masked images. Training and evaluation: "
    "cfmask fit | validate | test | predict. Other commands (each with --help): "
    "cfmask wise (WiSE-FT interpolation), cfmask soup (uniform model soup), "
    "cfmask demo (the offline benchmark), cfmask data check (dataset layouts)."
)

_EXTRA_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "wise": _wise,
    "soup": _soup,
    "demo": _demo,
    "data": _data,
}


def main(args: ArgsType = None) -> int:
    """Run the ``cfmask`` command line.

    Args:
        args: Arguments (without the program name); ``None`` reads ``sys.argv``.

    Returns:
        The process exit status.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in _EXTRA_COMMANDS:
        return _EXTRA_COMMANDS[argv[0]](argv[1:])
    load_plugins()
    # torch 2.14 deprecates an API Lightning 2.6 uses on every fit; nothing a user can act on.
    warnings.filterwarnings(
        "ignore", category=FutureWarning, module="lightning.pytorch.utilities._pytree"
    )
    CfmaskCLI(
        CounterfactualFineTuner,
        LightningDataModule,
        subclass_mode_data=True,
        # From the shell LightningCLI reads sys.argv itself; explicit args are for
        # in-process calls (tests, notebooks).
        args=None if args is None else argv,
        parser_kwargs={"prog": "cfmask", "description": _DESCRIPTION},
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [_results_report()]},
    )
    return 0


def _results_report() -> object:
    from cfmask.callbacks import TestResultsReport

    return TestResultsReport()

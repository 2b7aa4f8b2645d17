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

All of them are sub-commands of one parser (:mod:`cfmask.cli.commands` defines the
ones outside LightningCLI): ``cfmask -h`` lists them, ``cfmask --version``
prints the version, and a misspelt command gets the closest names.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import _load as pl_load
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from cfmask import __version__
from cfmask.cli.commands import (
    COMMANDS,
    LIGHTNING_COMMANDS,
    add_commands,
    command_names,
    run_command,
    suggest,
)
from cfmask.cli.plugins import PLUGIN_GROUP, load_plugins
from cfmask.training.callbacks import TestResultsReport
from cfmask.training.checkpoints import LastAndBestCheckpoint, refusing_unsafe_checkpoints
from cfmask.training.finetuner import CounterfactualFineTuner
from cfmask.training.head_setup import with_saved_class_names
from cfmask.training.prediction import PredictionWriter
from cfmask.training.recipe_checks import without_memory_options

__all__ = (
    "PLUGIN_GROUP",
    "CfmaskCLI",
    "CheckpointConfigConflict",
    "load_plugins",
    "main",
    "reconcile_model_config",
)

_log = logging.getLogger(__name__)


class CfmaskCLI(LightningCLI):
    """LightningCLI with cfmask's defaults.

    Adds a ``checkpoint`` group (a :class:`~cfmask.training.checkpoints.LastAndBestCheckpoint`
    that keeps the best ``val/acc1`` as ``best-…`` and the last completed step as
    ``last.ckpt``, as the paper selects the checkpoint on the held-out split), checks
    a ``--ckpt_path``'s stored arguments against the configuration, and prints a
    results table after ``test``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Register the checkpoint callback with the paper's selection rule."""
        parser.add_lightning_class_args(LastAndBestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
            }
        )

    def _parse_ckpt_path(self) -> None:
        """Reconcile the configuration with the hyper-parameters stored in ``--ckpt_path``.

        Lightning's own rule replaces the whole model configuration with the
        checkpoint's. Here a model argument the user left at its default takes the
        checkpoint's value (so a short config can test a checkpoint), but an argument
        the configuration sets explicitly is never replaced: a different backbone is
        an error, and so is any other difference when resuming ``fit`` (the optimiser
        and schedule state would not match); for ``validate``/``test``/``predict`` the
        configured value is kept and every differing key is listed in a warning.
        The file (local, or a URL) is read with ``weights_only=True``.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not (Path(ckpt_path).is_file() or "://" in str(ckpt_path)):
            return  # "best"/"last"/"hpc": resolved (and read safely) by the Trainer later
        with refusing_unsafe_checkpoints(ckpt_path):
            ckpt = pl_load(str(ckpt_path), map_location="cpu", weights_only=True)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams or "_class_path" in hparams:
            super()._parse_ckpt_path()
            return
        try:
            merged = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing of the hyper-parameters stored in {ckpt_path} failed!\n")
            raise
        user_model = self.config[subcommand]["model"]
        ckpt_model = merged[subcommand]["model"]
        take, conflicts = reconcile_model_config(
            _plain(user_model), _plain(ckpt_model), _init_defaults(self._model_class)
        )
        if conflicts:
            error = CheckpointConfigConflict(ckpt_path, subcommand, conflicts)
            if subcommand == "fit" or "backbone" in conflicts:
                raise error
            warnings.warn(str(error), UserWarning, stacklevel=2)
        for name in take:
            user_model[name] = ckpt_model[name]
        if take:
            _log.info("taken from %s: %s", ckpt_path, ", ".join(f"model.{n}" for n in take))

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        # cfmask's results table replaces Lightning's per-dataloader table, which
        # repeats the epoch-level per-set metrics under every loader; `--verbose true`
        # brings it back.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("test", "validate"):
            parser.set_defaults({"verbose": False})
        if subcommand == "predict":
            parser.add_lightning_class_args(PredictionWriter, "predictions")
        return parser


class CheckpointConfigConflict(ValueError):
    """The configuration sets model arguments that differ from the checkpoint's.

    Args:
        ckpt_path: The checkpoint.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        conflicts: Model argument → ``[(dotted key, checkpoint value, configured value)]``.
    """

    def __init__(
        self,
        ckpt_path: str,
        subcommand: str,
        conflicts: Mapping[str, list[tuple[str, Any, Any]]],
    ) -> None:
        self.conflicts = dict(conflicts)
        lines = [
            f"  {key}: checkpoint {ckpt!r}, configuration {mine!r}"
            for diffs in conflicts.values()
            for key, ckpt, mine in diffs
        ]
        if "backbone" in conflicts:
            advice = (
                "A checkpoint only loads into the backbone it was trained with: use the "
                "same backbone config as the run that wrote it."
            )
        elif subcommand == "fit":
            advice = (
                "Resuming restores the optimiser and schedule of the checkpoint's run, so its "
                "configuration must be used: drop these settings, or start a new run from "
                "the weights with --model.init_weights instead of --ckpt_path."
            )
        else:
            advice = "The configured values are used; drop them to use the checkpoint's."
        super().__init__(
            f"--ckpt_path {ckpt_path} was written with other model arguments than the "
            f"configuration of this `cfmask {subcommand}`:\n" + "\n".join(lines) + "\n" + advice
        )


def reconcile_model_config(
    configured: Mapping[str, Any], checkpoint: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[list[str], dict[str, list[tuple[str, Any, Any]]]]:
    """Decide, per model argument, between the configuration and a checkpoint.

    An argument whose configured value equals its ``__init__`` default was not set
    by the user and takes the checkpoint's value; an argument set to something else
    is explicit and is reported when it differs from the checkpoint (memory-only
    backbone options such as ``grad_checkpointing`` are ignored).

    Args:
        configured: The configured model arguments (plain data).
        checkpoint: The same arguments as stored in the checkpoint (plain data).
        defaults: ``__init__`` defaults of the model class (arguments without a
            default are always explicit).

    Returns:
        ``(take, conflicts)``: the argument names to take from the checkpoint, and
        for each explicit argument that differs, its differing dotted keys as
        ``(key, checkpoint value, configured value)``.

    Example:
        >>> reconcile_model_config(
        ...     {"lr": 0.1, "weight_decay": 0.1}, {"lr": 0.5, "weight_decay": 0.2},
        ...     {"lr": 3e-5, "weight_decay": 0.1})
        (['weight_decay'], {'lr': [('model.lr', 0.5, 0.1)]})
    """
    take: list[str] = []
    conflicts: dict[str, list[tuple[str, Any, Any]]] = {}
    _missing = object()
    for name in sorted(set(configured) | set(checkpoint)):
        mine, theirs = configured.get(name), checkpoint.get(name)
        if name == "backbone" and isinstance(mine, Mapping) and isinstance(theirs, Mapping):
            mine, theirs = without_memory_options(mine), without_memory_options(theirs)
            mine = with_saved_class_names(mine, theirs)
        if _normalise(mine) == _normalise(theirs):
            continue
        default = defaults.get(name, _missing)
        if default is not _missing and _normalise(mine) == _normalise(default):
            if name != "init_weights":  # the checkpoint's weights replace it anyway
                take.append(name)
            continue
        conflicts[name] = _differences(f"model.{name}", theirs, mine)
    return take, conflicts


def _normalise(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: _canonical_class_path(v) if k == "class_path" else _normalise(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def _canonical_class_path(path: Any) -> Any:
    """The path of a class in its defining module.

    ``cfmask.masking.ObjectMasker`` and ``cfmask.masking.maskers.ObjectMasker`` name
    the same class and compare equal after this.
    """
    if not isinstance(path, str) or "." not in path:
        return path
    module_name, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return path
    return f"{getattr(obj, '__module__', module_name)}.{getattr(obj, '__qualname__', name)}"


def _differences(prefix: str, theirs: Any, mine: Any) -> list[tuple[str, Any, Any]]:
    if isinstance(theirs, Mapping) and isinstance(mine, Mapping):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(theirs) | set(mine), key=str):
            if key == "class_path" and _canonical_class_path(theirs.get(key)) == (
                _canonical_class_path(mine.get(key))
            ):
                continue
            out += _differences(f"{prefix}.{key}", theirs.get(key), mine.get(key))
        return out
    if _normalise(theirs) == _normalise(mine):
        return []
    return [(prefix, theirs, mine)]


def _plain(namespace: Any) -> dict[str, Any]:
    as_dict = getattr(namespace, "as_dict", None)
    return dict(as_dict()) if callable(as_dict) else dict(namespace)


def _init_defaults(cls: Any) -> dict[str, Any]:
    target = cls if isinstance(cls, type) else CounterfactualFineTuner
    return {
        name: p.default
        for name, p in inspect.signature(target).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


_DESCRIPTION = (
    "Robust fine-tuning with counterfactual masked images. Every command takes -h; "
    "fit | validate | test | predict and the other commands that take options also "
    "take -c CONFIG.yaml and --print_config."
)


def main(args: ArgsType = None) -> int:
    """Run the ``cfmask`` command line.

    Args:
        args: Arguments (without the program name); ``None`` reads ``sys.argv``.

    Returns:
        The process exit status.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "--version":
        print(f"cfmask {_version()}")
        return 0
    if argv and not argv[0].startswith("-"):
        if argv[0] in COMMANDS:
            return run_command(argv[0], argv[1:])
        if argv[0] not in LIGHTNING_COMMANDS:
            print(f"usage: cfmask [-h] [--version] {{{','.join(command_names())}}} ...")
            print(f"cfmask: error: {suggest(argv[0])}", file=sys.stderr)
            return 2
    load_plugins()
    # torch 2.14 deprecates an API Lightning 2.6 uses on every fit; nothing a user can act on.
    warnings.filterwarnings(
        "ignore", category=FutureWarning, module="lightning.pytorch.utilities._pytree"
    )
    _CommandLine(
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


class _CommandLine(CfmaskCLI):
    """:class:`CfmaskCLI` whose top-level parser also lists cfmask's other commands."""

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        parser.add_argument("--version", action="version", version=f"cfmask {_version()}")
        add_commands(parser._subcommands_action)


def _version() -> str:
    return __version__


def _results_report() -> object:
    return TestResultsReport()

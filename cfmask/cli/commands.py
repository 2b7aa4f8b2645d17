"""The ``cfmask`` sub-commands besides ``fit | validate | test | predict``.

Each command is a :class:`Command`: a name, a one-line help, a builder of its
jsonargparse parser (so ``-c FILE`` and ``--print_config`` work as they do for
``fit``) and the function that runs it. :func:`cfmask.cli.main` dispatches to
them and registers their parsers under the same top-level parser as Lightning's
commands, so ``cfmask -h`` lists them all.

``cfmask demo`` keeps the demo's own option definitions
(:func:`cfmask.demo.app.build_parser`): they are copied into a jsonargparse
parser, and the parsed values are handed back to the demo as its own argument
list; ``cfmask demo pretrain ...`` and ``cfmask demo study ...`` go straight to the
pre-training command and the claims study (:attr:`Command.subcommands` entries).
``cfmask data`` has sub-commands of its own (``cfmask data check``, which takes ``-c``
and ``--print_config`` too) and is handed its arguments unchanged.
"""

from __future__ import annotations

import argparse
import difflib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace  # type: ignore[attr-defined]

from cfmask import demo
from cfmask.cli.sweeps import plot_results, wise_sweep
from cfmask.data import cli as data_cli
from cfmask.demo import app as demo_app
from cfmask.weightspace.ensembles import check_alphas, soup_checkpoint, wise_checkpoints
from cfmask.weightspace.export import export_checkpoint

__all__ = (
    "COMMANDS",
    "LIGHTNING_COMMANDS",
    "Command",
    "UnknownCommandError",
    "add_commands",
    "command_names",
    "run_command",
    "suggest",
)

#: The LightningCLI commands, in the order ``cfmask -h`` lists them.
LIGHTNING_COMMANDS: tuple[str, ...] = ("fit", "validate", "test", "predict")


@dataclass(frozen=True)
class Command:
    """One ``cfmask`` sub-command outside LightningCLI.

    Attributes:
        name: The word after ``cfmask``.
        help: One line for ``cfmask -h``.
        build_parser: Returns the command's parser (``prog`` is ``cfmask <name>``).
        run: Runs the command on the parsed namespace; returns the exit status.
            ``None`` for commands that take their raw arguments (see ``raw``).
        raw: Runs the command on the raw argument list, for commands that parse
            their own arguments (``cfmask data``).
        renamed: Deprecated option spellings and their replacements.
        subcommands: Words that may follow the command name, each with the runner
            that takes the arguments after it (``cfmask demo pretrain ...``).
    """

    name: str
    help: str
    build_parser: Callable[[], ArgumentParser]
    run: Callable[[Namespace, ArgumentParser], int] | None = None
    raw: Callable[[list[str]], int] | None = None
    renamed: tuple[tuple[str, str], ...] = ()
    subcommands: tuple[tuple[str, Callable[[list[str]], int]], ...] = ()


class UnknownCommandError(ValueError):
    """The first argument is not a ``cfmask`` command."""


def _parser(name: str, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=f"cfmask {name}", description=description)
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="YAML file with any of the options below"
    )
    return parser


def _fail(parser: ArgumentParser, err: Exception) -> int:
    parser.error(str(err))  # exits with status 2
    return 2  # pragma: no cover


# ---------------------------------------------------------------------- wise
def _wise_parser() -> ArgumentParser:
    parser = _parser(
        "wise",
        "WiSE-FT: interpolate every weight (head included) between the zero-shot and a "
        "fine-tuned model, (1 - alpha) * theta_0 + alpha * theta_1, and write one "
        "checkpoint per alpha.",
    )
    parser.add_argument("checkpoint", type=str, help="fine-tuned cfmask .ckpt (theta_1)")
    parser.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        default=[0.5],
        help="distinct mixing coefficients in [0, 1]",
    )
    parser.add_argument(
        "--zeroshot",
        type=str | None,
        default=None,
        help="zero-shot weights (theta_0); default: the initial model stored in the "
        "checkpoint, else the pre-trained model rebuilt from its config (refused for a "
        "run without pre-trained weights)",
    )
    parser.add_argument(
        "--output", type=str, default="wise", help="folder for wise_alpha<alpha>.ckpt files"
    )
    parser.add_argument(
        "--data",
        type=str | None,
        default=None,
        help="datamodule config (YAML with class_path/init_args, or a cfmask test config "
        "with a data: section): test every alpha on it and write one results file",
    )
    parser.add_argument(
        "--results",
        type=str | None,
        default=None,
        help="results CSV of the evaluated sweep (default: <output>/wise_results.csv)",
    )
    parser.add_argument(
        "--method", type=str, default="WiSE-FT", help="label of the sweep in results and plots"
    )
    parser.add_argument(
        "--seed", type=int | None, default=None, help="seed of the fine-tuned run (error bars)"
    )
    parser.add_argument(
        "--accelerator", type=str, default="auto", help="Lightning accelerator for the tests"
    )
    return parser


def _run_wise(ns: Namespace, parser: ArgumentParser) -> int:
    try:
        check_alphas(ns.alpha)
        if ns.data is None:
            for path in wise_checkpoints(ns.checkpoint, ns.alpha, ns.output, ns.zeroshot):
                print(path)
            return 0
        results, rows = wise_sweep(
            ns.checkpoint,
            ns.alpha,
            ns.output,
            ns.data,
            zeroshot=ns.zeroshot,
            results=ns.results,
            method=ns.method,
            seed=ns.seed,
            accelerator=ns.accelerator,
        )
    except (ValueError, FileNotFoundError) as err:
        return _fail(parser, err)
    _print_sweep(rows)
    print(f"results written to {results}")
    return 0


def _print_sweep(rows: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    sets = list(rows[0].accuracies) if rows else []
    table = Table(title="WiSE-FT sweep: top-1 accuracy (%)")
    for col in ("alpha", *sets, "OOD avg"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r.alpha:g}",
            *(f"{100 * r.accuracies[s]:.2f}" for s in sets),
            f"{100 * r.ood_avg:.2f}",
        )
    Console().print(table)


# ---------------------------------------------------------------------- plot
def _plot_parser() -> ArgumentParser:
    parser = _parser(
        "plot",
        "Draw ID vs OOD-average accuracy for any set of results files: sweep files of "
        "cfmask wise --data (curves; several seeds give error bars) and results.json "
        "files of cfmask test (points).",
    )
    parser.add_argument("results", type=str, nargs="+", help="results files (.csv / .json)")
    parser.add_argument(
        "--output", type=str, default="tradeoff.png", help="image file (.png, .pdf, .svg)"
    )
    parser.add_argument(
        "--labels",
        type=str,
        nargs="+",
        default=None,
        help="one method label per results file (default: the sweep's method, or the "
        "folder name of a results.json)",
    )
    parser.add_argument("--title", type=str, default="ID vs OOD average", help="figure title")
    return parser


def _run_plot(ns: Namespace, parser: ArgumentParser) -> int:
    try:
        print(plot_results(ns.results, ns.output, ns.labels, ns.title))
    except (ValueError, FileNotFoundError, ImportError) as err:
        return _fail(parser, err)
    return 0


# ---------------------------------------------------------------------- soup
def _soup_parser() -> ArgumentParser:
    parser = _parser("soup", "Uniform model soup: the average of several fine-tuned checkpoints.")
    parser.add_argument("checkpoints", type=str, nargs="+", help="two or more cfmask .ckpt files")
    parser.add_argument(
        "--output", type=str, default="soup.ckpt", help="soup checkpoint (not one of the inputs)"
    )
    return parser


def _run_soup(ns: Namespace, parser: ArgumentParser) -> int:
    try:
        print(soup_checkpoint(ns.checkpoints, ns.output))
    except (ValueError, FileNotFoundError) as err:
        return _fail(parser, err)
    return 0


# -------------------------------------------------------------------- export
def _export_parser() -> ArgumentParser:
    parser = _parser(
        "export",
        "Write a fine-tuned checkpoint's model as weights that open_clip.create_model("
        "name, pretrained=FILE) or timm.create_model(name, pretrained=True, "
        "pretrained_cfg_overlay=dict(file=FILE, num_classes=K)) load.",
    )
    parser.add_argument("checkpoint", type=str, help="cfmask .ckpt (fit, wise or soup)")
    parser.add_argument(
        "--to", type=str, choices=["open_clip", "timm"], required=True, help="target library"
    )
    parser.add_argument(
        "--output",
        type=str | None,
        default=None,
        help="weights file (default: <checkpoint stem>-<to>.safetensors next to it)",
    )
    parser.add_argument(
        "--format",
        type=str | None,
        choices=["safetensors", "pt", None],
        default=None,
        help="safetensors (default, no pickle) or pt (torch.save of plain tensors)",
    )
    return parser


def _run_export(ns: Namespace, parser: ArgumentParser) -> int:
    try:
        result = export_checkpoint(ns.checkpoint, ns.to, ns.output, ns.format)
    except (ValueError, FileNotFoundError) as err:
        return _fail(parser, err)
    print(result.weights)
    for extra in (result.head, result.config):
        if extra is not None:
            print(extra)
    print(f"load with: {result.load_snippet}")
    return 0


# ---------------------------------------------------------------------- demo
def _demo_argparse() -> argparse.ArgumentParser:
    return demo_app.build_parser()


def _demo_parser() -> ArgumentParser:
    source = _demo_argparse()
    parser = _parser("demo", source.description or "")
    for action in source._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._StoreTrueAction):
            parser.add_argument(*action.option_strings, action="store_true", help=action.help)
            continue
        base: Any = action.type if action.type in (int, float) else str
        default = action.default if action.default is None else base(action.default)
        parser.add_argument(
            *action.option_strings,
            type=base if default is not None else base | None,
            default=default,
            help=action.help,
        )
    return parser


def _run_demo(ns: Namespace, parser: ArgumentParser) -> int:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return _fail(
            parser,
            ImportError(
                "cfmask demo draws figures with matplotlib, which is not installed: "
                "pip install 'cfmask[demo]' (scripts/setup-env.sh installs it)"
            ),
        )

    argv: list[str] = []
    for action in _demo_argparse()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        value = ns.get(action.dest)
        if isinstance(action, argparse._StoreTrueAction):
            argv += [action.option_strings[0]] if value else []
        elif value is not None:
            argv += [action.option_strings[0], str(value)]
    return demo.main(argv)


def _run_demo_pretrain(argv: list[str]) -> int:
    """``cfmask demo pretrain --output FILE``: retrain the demo's pre-trained model."""
    return demo.main(["pretrain", *argv])


def _run_demo_study(argv: list[str]) -> int:
    """``cfmask demo study ...``: the claims study over data seeds and training seeds."""
    return demo.main(["study", *argv])


# ---------------------------------------------------------------------- data
def _data_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="cfmask data",
        description="Dataset tools. cfmask data check: validate ImageNet / OOD layouts "
        "and counts (never downloads); see cfmask data check -h.",
    )
    return parser


def _run_data(argv: list[str]) -> int:
    return data_cli.data_command(argv)


#: Every command outside LightningCLI, by name.
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "wise",
            "WiSE-FT interpolation checkpoints between zero-shot and fine-tuned weights",
            _wise_parser,
            _run_wise,
            renamed=(("--output-dir", "--output"),),
        ),
        Command(
            "soup", "Uniform model soup of several fine-tuned checkpoints", _soup_parser, _run_soup
        ),
        Command(
            "export",
            "Fine-tuned weights for open_clip or timm (safetensors)",
            _export_parser,
            _run_export,
        ),
        Command(
            "plot",
            "ID vs OOD-average figure of sweep and test results files",
            _plot_parser,
            _run_plot,
        ),
        Command(
            "demo",
            "The offline Shifted Fashion-MNIST benchmark",
            _demo_parser,
            _run_demo,
            subcommands=(("pretrain", _run_demo_pretrain), ("study", _run_demo_study)),
        ),
        Command("data", "Dataset tools: cfmask data check", _data_parser, raw=_run_data),
    )
}


def command_names() -> list[str]:
    """Every ``cfmask`` command: Lightning's first, then :data:`COMMANDS`."""
    return [*LIGHTNING_COMMANDS, *COMMANDS]


def suggest(word: str) -> str:
    """The error message for an unknown command, with the closest command names.

    Args:
        word: What the user typed where a command was expected.

    Returns:
        ``"unknown command 'fitt'; did you mean 'fit'? ..."``.

    Example:
        >>> "did you mean 'wise'?" in suggest("wsie")
        True
    """
    names = command_names()
    close = difflib.get_close_matches(word, names, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown command {word!r}{hint} Commands: {', '.join(names)} (cfmask -h)."


def add_commands(subcommands: Any) -> None:
    """Register every :data:`COMMANDS` parser under a jsonargparse sub-commands action.

    Args:
        subcommands: The ``_ActionSubCommands`` of the top-level parser.
    """
    for command in COMMANDS.values():
        subcommands.add_subcommand(command.name, command.build_parser(), help=command.help)


def _rename(argv: Sequence[str], command: Command) -> list[str]:
    out: list[str] = []
    for arg in argv:
        for old, new in command.renamed:
            if arg == old or arg.startswith(old + "="):
                warnings.warn(
                    f"cfmask {command.name}: {old} is deprecated, use {new}",
                    FutureWarning,
                    stacklevel=3,
                )
                arg = new + arg[len(old) :]
        out.append(arg)
    return out


def run_command(name: str, argv: Sequence[str]) -> int:
    """Parse ``argv`` for command ``name`` and run it.

    Args:
        name: A key of :data:`COMMANDS`.
        argv: The arguments after the command name.

    Returns:
        The exit status.

    Raises:
        UnknownCommandError: If ``name`` is not a command.
    """
    if name not in COMMANDS:
        raise UnknownCommandError(suggest(name))
    command = COMMANDS[name]
    for word, runner in command.subcommands:
        if list(argv[:1]) == [word]:
            return runner(list(argv[1:]))
    if command.raw is not None:
        return command.raw(list(argv))
    assert command.run is not None
    parser = command.build_parser()
    args = _rename(argv, command)
    _check_options(parser, args)
    ns = parser.parse_args(args)
    return command.run(ns, parser)


def _check_options(parser: ArgumentParser, argv: Sequence[str]) -> None:
    """Refuse an unknown ``--option`` with the closest known spellings."""
    known = [s for s in parser._option_string_actions if s.startswith("--")]
    for arg in argv:
        if arg == "--" or not arg.startswith("--"):
            continue
        option = arg.split("=", 1)[0]
        if option not in known:
            close = difflib.get_close_matches(option, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            parser.error(f"unrecognized option {option}{hint}")

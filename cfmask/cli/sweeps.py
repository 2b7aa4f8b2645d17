"""Evaluated WiSE-FT sweeps and their ID vs OOD-average plots.

:func:`wise_sweep` (``cfmask wise CKPT --alpha ... --data DATA.yaml``) writes one
WiSE-FT checkpoint per ``alpha`` (:func:`cfmask.weightspace.ensembles.wise_checkpoints`),
tests each on the datamodule described by ``DATA.yaml`` and writes one CSV file
for the whole sweep, one row per ``alpha``::

    method,seed,alpha,checkpoint,source,config_hash,<set>...,ood_avg,id_set

Accuracies are top-1 in ``[0, 1]`` as in ``results.json``; ``<set>`` are the
datamodule's test sets (ID first); ``checkpoint`` is the WiSE-FT file and
``source`` the fine-tuned checkpoint (absolute paths); ``config_hash`` is
a digest of the data config, the model's hyper-parameters and the
zero-shot source, so rows of different settings are never mixed up silently.

:func:`plot_results` (``cfmask plot FILE...``) draws ID against OOD-average
accuracy for any mix of sweep files and ``results.json`` files of ``cfmask test``:
a method with several ``alpha`` values becomes a curve, any other method a point;
rows of the same method and ``alpha`` from several seeds are averaged, with their
standard deviation as error bars.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfmask.backbones.state_dicts import STUDENT_PREFIX, extract_prefixed, read_checkpoint
from cfmask.cli.plugins import load_plugins
from cfmask.evaluation.metrics import OOD_AVG
from cfmask.evaluation.plotting import draw_tradeoff, pyplot
from cfmask.training.finetuner import CounterfactualFineTuner
from cfmask.weightspace.ensembles import check_alphas, wise_checkpoints

__all__ = (
    "ResultRow",
    "config_hash",
    "group_rows",
    "load_datamodule",
    "plot_results",
    "read_results",
    "wise_sweep",
    "write_sweep",
)

_FIXED = ("method", "seed", "alpha", "checkpoint", "source", "config_hash")


@dataclass
class ResultRow:
    """One evaluated model: a sweep row or a ``results.json``.

    Attributes:
        method: Label of the method (the plot legend).
        alpha: WiSE-FT coefficient, ``None`` outside a sweep.
        seed: Training seed when known.
        accuracies: Set name -> top-1 in ``[0, 1]`` (ID set first).
        id_set: Name of the ID set.
        ood_avg: Mean top-1 over the OOD sets.
        checkpoint: The evaluated checkpoint.
        source: The fine-tuned checkpoint a WiSE-FT row was made from.
        config_hash: Digest of the evaluated setting (see :func:`config_hash`).
    """

    method: str
    alpha: float | None
    seed: str
    accuracies: dict[str, float]
    id_set: str
    ood_avg: float
    checkpoint: str = ""
    source: str = ""
    config_hash: str = ""


def config_hash(*parts: Any) -> str:
    """A short, stable digest of plain-data settings.

    Args:
        *parts: JSON-serialisable values (anything else is written with ``str``).

    Returns:
        The first 12 hex digits of the SHA-256 of their sorted-key JSON.

    Example:
        >>> config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
        True
    """
    text = json.dumps(list(parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _data_spec(config: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, Mapping):
        spec: Any = dict(config)
    else:
        import yaml  # type: ignore[import-untyped]

        path = Path(config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data config not found: {path}")
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(spec, Mapping) and "data" in spec:
        spec = spec["data"]
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ValueError(
            "the data config must hold a datamodule as `class_path` + `init_args`, at the "
            "top level or under `data:` (the data section of a `cfmask test -c` config)"
        )
    return dict(spec)


def load_datamodule(config: str | os.PathLike[str] | Mapping[str, Any]) -> Any:
    """Build a LightningDataModule from a config file or mapping.

    Args:
        config: A YAML file or mapping with ``class_path``/``init_args``, at the top
            level or under ``data`` (so a ``cfmask test -c`` config works as it is).
            Built-in and plugin classes may be named by class name alone.

    Returns:
        The datamodule.
    """
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    load_plugins()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    cfg = parser.parse_object({"data": _data_spec(config)})
    return parser.instantiate_classes(cfg).data


def _evaluate(model: Any, datamodule: Any, accelerator: str) -> dict[str, float]:
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    return dict(model.test_results)


def write_sweep(path: str | Path, rows: Sequence[ResultRow]) -> Path:
    """Write sweep rows as CSV (columns: see the module docstring).

    Args:
        path: Output file.
        rows: Rows with the same sets.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sets: list[str] = []
    for r in rows:
        sets += [s for s in r.accuracies if s not in sets]
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*_FIXED, *sets, OOD_AVG, "id_set"])
        for r in rows:
            writer.writerow(
                [
                    r.method,
                    r.seed,
                    "" if r.alpha is None else repr(r.alpha),
                    r.checkpoint,
                    r.source,
                    r.config_hash,
                    *(repr(r.accuracies[s]) if s in r.accuracies else "" for s in sets),
                    repr(r.ood_avg),
                    r.id_set,
                ]
            )
    return out


def wise_sweep(
    finetuned: str | Path,
    alphas: Sequence[float],
    output_dir: str | Path,
    data: str | os.PathLike[str] | Mapping[str, Any],
    zeroshot: str | Path | None = None,
    results: str | Path | None = None,
    method: str = "WiSE-FT",
    seed: int | None = None,
    accelerator: str = "auto",
) -> tuple[Path, list[ResultRow]]:
    """Write the WiSE-FT checkpoints, test each on ``data`` and write one results file.

    Args:
        finetuned: The fine-tuned cfmask checkpoint (``theta_1``).
        alphas: Distinct coefficients in ``[0, 1]``.
        output_dir: Folder of the checkpoints.
        data: Datamodule config (see :func:`load_datamodule`).
        zeroshot: Optional zero-shot weights (see
            :func:`cfmask.weightspace.ensembles.initial_weights`).
        results: CSV file; default ``<output_dir>/wise_results.csv``.
        method: Label of the sweep in the file and in plots.
        seed: Training seed of the fine-tuned run, recorded for error bars.
        accelerator: Lightning accelerator for the evaluation.

    Returns:
        The results file and its rows, in the order of ``alphas``.
    """
    from lightning.pytorch.cli import instantiate_module

    check_alphas(alphas)
    spec = _data_spec(data)
    datamodule = load_datamodule(spec)
    paths = wise_checkpoints(finetuned, alphas, output_dir, zeroshot)
    hparams = dict(read_checkpoint(paths[0])["hyper_parameters"])
    digest = config_hash(spec, hparams, str(zeroshot) if zeroshot else "stored-or-rebuilt")
    hparams.pop("init_weights", None)
    hparams.pop("_instantiator", None)
    hparams["distillation"] = []
    model = instantiate_module(CounterfactualFineTuner, hparams)
    rows: list[ResultRow] = []
    for alpha, path in zip(alphas, paths, strict=True):
        state = extract_prefixed(read_checkpoint(path)["state_dict"], STUDENT_PREFIX)
        model.student.load_state_dict(state)
        acc = _evaluate(model, datamodule, accelerator)
        id_set = next((s.name for s in model.test_eval_sets if s.is_id), next(iter(acc)))
        avg = acc.pop(OOD_AVG, float("nan"))
        rows.append(
            ResultRow(
                method=method,
                alpha=float(alpha),
                seed="" if seed is None else str(seed),
                accuracies=acc,
                id_set=id_set,
                ood_avg=float(avg),
                checkpoint=str(Path(path).resolve()),
                source=str(Path(finetuned).expanduser().resolve()),
                config_hash=digest,
            )
        )
    out = write_sweep(results or Path(output_dir) / "wise_results.csv", rows)
    return out, rows


def _read_csv(path: Path) -> list[ResultRow]:
    rows: list[ResultRow] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        missing = [f for f in ("method", "alpha", OOD_AVG, "id_set") if f not in fields]
        if missing:
            raise ValueError(
                f"{path} is not a cfmask sweep file (no {missing} columns); pass files "
                "written by `cfmask wise --data` or results.json files of `cfmask test`"
            )
        sets = [f for f in fields if f not in (*_FIXED, OOD_AVG, "id_set")]
        for line in reader:
            rows.append(
                ResultRow(
                    method=line["method"],
                    alpha=float(line["alpha"]) if line["alpha"] else None,
                    seed=line.get("seed") or "",
                    accuracies={s: float(line[s]) for s in sets if line[s]},
                    id_set=line["id_set"],
                    ood_avg=float(line[OOD_AVG]),
                    checkpoint=line.get("checkpoint") or "",
                    source=line.get("source") or "",
                    config_hash=line.get("config_hash") or "",
                )
            )
    return rows


def _read_json(path: Path, label: str) -> list[ResultRow]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(payload, Mapping) or "acc1" not in payload:
        raise ValueError(f"{path} is not a results.json of `cfmask test` (no 'acc1')")
    acc = {str(k): float(v) for k, v in payload["acc1"].items()}
    id_set = str(payload.get("id_set") or next(iter(acc)))
    avg = payload.get(OOD_AVG)
    return [
        ResultRow(
            method=label,
            alpha=None,
            seed="",
            accuracies=acc,
            id_set=id_set,
            ood_avg=float("nan") if avg is None else float(avg),
            checkpoint=str(path),
        )
    ]


def read_results(
    paths: Sequence[str | Path], labels: Sequence[str] | None = None
) -> list[ResultRow]:
    """Read sweep CSV files and ``results.json`` files into rows.

    Args:
        paths: Files; ``.csv`` are sweep files, ``.json`` results of ``cfmask test``.
        labels: Optional method label per file (overrides the sweep's ``method``;
            a ``results.json`` is otherwise labelled by its folder's name).

    Returns:
        All rows, file by file.
    """
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"got {len(labels)} labels for {len(paths)} files; give one per file")
    rows: list[ResultRow] = []
    for i, item in enumerate(paths):
        path = Path(item).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"results file not found: {path}")
        label = labels[i] if labels is not None else None
        if path.suffix == ".json":
            rows += _read_json(path, label or path.parent.name or path.stem)
        else:
            read = _read_csv(path)
            if label is not None:
                for r in read:
                    r.method = label
            rows += read
    return rows


def _stat(values: Sequence[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": float(n)}


def group_rows(
    rows: Sequence[ResultRow],
) -> tuple[dict[str, list[dict[str, float]]], dict[str, dict[str, dict[str, float]]]]:
    """Split rows into WiSE-FT curves and single points, averaging over seeds.

    Rows of the same method and ``alpha`` are averaged (accuracies in %), with the
    sample standard deviation when there are several.

    Args:
        rows: Rows from :func:`read_results`.

    Returns:
        ``(curves, points)``: ``curves[method]`` is a list of ``{"alpha", "id",
        "ood_avg"}`` (plus ``id_std``/``ood_avg_std`` with several seeds) sorted by
        ``alpha``, for methods with several ``alpha`` values; ``points[method]`` is
        ``{"id": stat, "ood_avg": stat}`` for the others.
    """
    by_method: dict[str, dict[float | None, list[ResultRow]]] = {}
    for r in rows:
        by_method.setdefault(r.method, {}).setdefault(r.alpha, []).append(r)
    curves: dict[str, list[dict[str, float]]] = {}
    points: dict[str, dict[str, dict[str, float]]] = {}
    for method, groups in by_method.items():
        stats = {
            alpha: (
                _stat([100 * r.accuracies[r.id_set] for r in group]),
                _stat([100 * r.ood_avg for r in group]),
            )
            for alpha, group in groups.items()
        }
        if len(groups) > 1:
            if None in groups:
                raise ValueError(
                    f"method {method!r} mixes sweep rows with a result without alpha; "
                    "label them differently (--labels)"
                )
            curve = []
            for alpha in sorted(a for a in groups if a is not None):
                id_stat, ood_stat = stats[alpha]
                entry = {"alpha": alpha, "id": id_stat["mean"], "ood_avg": ood_stat["mean"]}
                if id_stat["n"] > 1:
                    entry |= {"id_std": id_stat["std"], "ood_avg_std": ood_stat["std"]}
                curve.append(entry)
            curves[method] = curve
        else:
            ((id_stat, ood_stat),) = stats.values()
            points[method] = {"id": id_stat, "ood_avg": ood_stat}
    return curves, points


def plot_results(
    paths: Sequence[str | Path],
    output: str | Path,
    labels: Sequence[str] | None = None,
    title: str = "ID vs OOD average",
) -> Path:
    """Draw ID vs OOD-average accuracy of any set of results files to a PNG.

    Args:
        paths: Sweep CSV files and/or ``results.json`` files.
        output: Image file (the suffix picks the format, e.g. ``.png``/``.pdf``).
        labels: Optional method label per file.
        title: Figure title.

    Returns:
        ``output`` as a :class:`~pathlib.Path`.
    """
    rows = read_results(paths, labels)
    curves, points = group_rows(rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.2))
    draw_tradeoff(ax, curves, points, {}, list(points), title)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

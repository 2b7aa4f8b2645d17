"""``cfmask data check``: validate data layouts and compare counts with the published ones.

Exposed as :func:`data_command` (``argv`` after ``cfmask data``), which the
main CLI dispatches to; :func:`check_layout` is the library function behind it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cfmask.data.folder import CorruptImageError, DataLayoutError, FolderImageDataset
from cfmask.data.imagenet import EXPECTED_COUNTS, ImageNet
from cfmask.data.ood import ImageNetA, ImageNetR, ImageNetSketch, ImageNetV2, ObjectNet
from cfmask.data.roots import OOD_SETS, resolve_set_root

__all__ = ("ALL_SETS", "LayoutReport", "SetReport", "check_layout", "data_command", "main_check")

#: Every set ``data check`` knows; ``imagenet`` covers train and val.
ALL_SETS: tuple[str, ...] = ("imagenet", *OOD_SETS)

_EXPECTED_CLASSES = {
    "imagenet_train": 1000,
    "imagenet": 1000,
    "imagenet_v2": 1000,
    "imagenet_r": 200,
    "imagenet_sketch": 1000,
    "objectnet": 113,
    "imagenet_a": 200,
}


@dataclass
class SetReport:
    """What ``data check`` found for one set.

    Attributes:
        name: Set key (``imagenet_train`` and ``imagenet`` for ImageNet's splits).
        status: ``"ok"``, ``"truncated"`` (usable, wrong count), ``"missing"``
            or ``"error"`` (unusable layout).
        path: Directory tried (or found).
        images: Images found (ObjectNet: in the mapped classes).
        expected_images: Published count.
        classes: Class folders that hold at least one image.
        expected_classes: Published class count.
        message: Details for non-ok statuses.
        unreadable: Files that failed to decode (only with ``verify``).
    """

    name: str
    status: str
    path: str = ""
    images: int | None = None
    expected_images: int | None = None
    classes: int | None = None
    expected_classes: int | None = None
    message: str = ""
    unreadable: list[str] = field(default_factory=list)


@dataclass
class LayoutReport:
    """All set reports; ``ok`` is ``False`` if a set is missing, malformed or unreadable."""

    sets: list[SetReport]

    @property
    def ok(self) -> bool:
        """No set is missing or broken (truncated sets still count as ok)."""
        return all(s.status in ("ok", "truncated") for s in self.sets)

    @property
    def truncated(self) -> list[str]:
        """Names of sets whose image count differs from the published one."""
        return [s.name for s in self.sets if s.status == "truncated"]

    def to_json(self) -> str:
        """The report as JSON."""
        return json.dumps({"ok": self.ok, "sets": [asdict(s) for s in self.sets]}, indent=2)

    def table(self) -> Table:
        """The report as a rich table."""
        t = Table(title="cfmask data check")
        for col in ("Set", "Status", "Images (found / expected)", "Classes", "Path / note"):
            t.add_column(col)
        style = {"ok": "green", "truncated": "bold yellow", "missing": "red", "error": "bold red"}
        for s in self.sets:
            imgs = "" if s.images is None else f"{s.images:,}"
            if s.expected_images is not None:
                imgs += f" / {s.expected_images:,}"
            cls = "" if s.classes is None else f"{s.classes} / {s.expected_classes}"
            note = s.path + (f"\n{s.message}" if s.message else "")
            t.add_row(s.name, f"[{style[s.status]}]{s.status}[/]", imgs, cls, note)
        return t


def _verify(ds: FolderImageDataset) -> list[str]:
    bad = []
    for i in range(len(ds)):
        try:
            ds.load(i)
        except CorruptImageError:
            bad.append(str(ds.samples[i].path))
    return bad


def _report(name: str, ds: FolderImageDataset, verify: bool) -> SetReport:
    expected = EXPECTED_COUNTS[name]
    nonempty = {s.class_index for s in ds.samples}
    r = SetReport(
        name=name,
        status="ok" if len(ds) == expected else "truncated",
        path=str(ds.root),
        images=len(ds),
        expected_images=expected,
        classes=len(nonempty),
        expected_classes=_EXPECTED_CLASSES[name],
    )
    empty = [f for i, f in enumerate(ds.folders) if i not in nonempty]
    if empty:
        shown = ", ".join(empty[:5]) + (" …" if len(empty) > 5 else "")
        r.message = f"{len(empty)} class folder(s) hold no images: {shown}."
    if isinstance(ds, ObjectNet):
        r.message = (
            f"{ds.num_images_all:,} images in all folders (ObjectNet 1.0: "
            f"{EXPECTED_COUNTS['objectnet_all']:,}); counted: the mapped classes. " + r.message
        ).strip()
    if r.status == "truncated":
        kind = "FEWER" if len(ds) < expected else "MORE"
        r.message = (
            f"{kind} images than published ({len(ds):,} vs {expected:,}); results on this "
            f"set are not comparable to papers. " + r.message
        ).strip()
    if verify:
        r.unreadable = _verify(ds)
        if r.unreadable:
            r.status = "error"
            r.message += f" {len(r.unreadable)} unreadable file(s), e.g. {r.unreadable[0]}"
    return r


def check_layout(
    root: str | os.PathLike[str] | None,
    sets: Sequence[str] = ALL_SETS,
    roots: Mapping[str, str | os.PathLike[str] | None] | None = None,
    verify: bool = False,
) -> LayoutReport:
    """Validate each set's layout and count its images and classes.

    Never downloads and never raises for bad data: every problem becomes a
    :class:`SetReport` with status ``missing`` or ``error`` and a message
    naming the path tried and the expected layout.

    Args:
        root: Common data root (sets found by their usual folder names).
        sets: Which of :data:`ALL_SETS` to check.
        roots: Per-set directories that override ``root``.
        verify: Also decode every image (slow: hours for ImageNet train).

    Returns:
        The report.
    """
    unknown = [s for s in sets if s not in ALL_SETS]
    if unknown:
        raise ValueError(f"unknown set(s) {unknown}; choose from {list(ALL_SETS)}")
    roots = roots or {}
    builders = {
        "imagenet_v2": ImageNetV2,
        "imagenet_r": ImageNetR,
        "imagenet_sketch": ImageNetSketch,
        "objectnet": ObjectNet,
        "imagenet_a": ImageNetA,
    }
    reports: list[SetReport] = []
    for name in sets:
        try:
            path = resolve_set_root(name, root, roots.get(name))
        except DataLayoutError as err:
            names = ["imagenet_train", "imagenet"] if name == "imagenet" else [name]
            reports += [SetReport(n, "missing", message=str(err)) for n in names]
            continue
        parts: list[tuple[str, object]] = (
            [("imagenet_train", "train"), ("imagenet", "val")]
            if name == "imagenet"
            else [(name, None)]
        )
        for key, split in parts:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    ds: FolderImageDataset = (
                        ImageNet(path, "train" if split == "train" else "val")
                        if name == "imagenet"
                        else builders[name](path)
                    )
                rep = _report(key, ds, verify)
                for w in caught:
                    rep.message = (rep.message + " " + str(w.message)).strip()
                reports.append(rep)
            except DataLayoutError as err:
                reports.append(SetReport(key, "error", path=str(path), message=str(err)))
    return LayoutReport(reports)


def main_check(argv: Sequence[str] | None = None) -> int:
    """Run ``data check`` with command-line arguments; return the exit status.

    Exit status: 0 if every set is usable (truncated sets print a loud
    warning; use ``--strict`` to fail on them), 1 otherwise.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser  # type: ignore[attr-defined]

    p = ArgumentParser(
        prog="cfmask data check",
        description="Validate ImageNet / OOD data layouts and counts (never downloads).",
    )
    p.add_argument(
        "-c", "--config", action=ActionConfigFile, help="YAML file with any of the options below"
    )
    p.add_argument("--root", type=str | None, help="common data root holding the sets' folders")
    for s in ALL_SETS:
        p.add_argument(
            f"--{s.replace('_', '-')}-root",
            dest=f"{s}_root",
            type=str | None,
            help=f"{s} directory",
        )
    p.add_argument("--sets", nargs="+", default=list(ALL_SETS), choices=ALL_SETS)
    p.add_argument("--verify", action="store_true", help="decode every image (slow)")
    p.add_argument("--strict", action="store_true", help="fail on truncated sets too")
    p.add_argument("--json", type=str | None, help="also write the report as JSON here")
    args = p.parse_args(list(argv) if argv is not None else None)
    roots = {s: getattr(args, f"{s}_root") for s in ALL_SETS}
    if args.root is None and not any(roots.values()):
        p.error("give --root or at least one --<set>-root")
    report = check_layout(args.root, args.sets, roots, verify=args.verify)
    console = Console()
    console.print(report.table())
    for name in report.truncated:
        console.print(
            f"[bold yellow]WARNING[/]: {name} does not have the published number of images; "
            "its accuracy will not be comparable to published results."
        )
    if args.json is not None:
        Path(args.json).write_text(report.to_json() + "\n")
    if not report.ok or (args.strict and report.truncated):
        return 1
    return 0


def data_command(argv: list[str]) -> int:
    """Entry point for ``cfmask data <subcommand> …``; returns the exit status.

    Args:
        argv: Arguments after ``data``, e.g. ``["check", "--root", "/data"]``.
    """
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: cfmask data check [--root ROOT] [options]   (see: cfmask data check -h)")
        return 0 if argv else 2
    if argv[0] == "check":
        return main_check(argv[1:])
    print(f"cfmask data: unknown subcommand {argv[0]!r}; available: check")
    return 2

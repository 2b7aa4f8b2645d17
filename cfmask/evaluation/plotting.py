"""ID vs OOD-average plots: the analogue of the paper's Fig. 5 and Fig. 6.

Shared by ``cfmask plot`` (any set of results files) and the demo's report
(``cfmask.demo.report.plot_tradeoff``). matplotlib is an optional dependency
(the ``plot`` extra); it is imported only when a figure is drawn, with an error
that names the install command when it is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ("MARKERS", "draw_tradeoff", "pyplot")

#: Marker cycle of the single points (one per method).
MARKERS = "osD^v<>pPX*hH"

#: The Greek letter alpha, spelled by name so that linters see no look-alike.
_ALPHA = "\N{GREEK SMALL LETTER ALPHA}"


def pyplot() -> Any:
    """Import ``matplotlib.pyplot`` with the file-only Agg backend.

    Returns:
        The ``matplotlib.pyplot`` module.

    Raises:
        ImportError: If matplotlib is not installed, naming the extra to install.
    """
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "drawing figures needs matplotlib, which cfmask installs only on request: "
            "pip install 'cfmask[plot]' (or pip install matplotlib)."
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _std(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(f"{key}_std")
    return None if value is None else float(value)


def draw_tradeoff(
    ax: Any,
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    points: Mapping[str, Mapping[str, Any]],
    labels: Mapping[str, str],
    keys: Sequence[str],
    title: str,
    annotate: Sequence[float] = (0.5,),
) -> None:
    """Draw ID accuracy (x) against OOD-average accuracy (y) on one axes.

    Args:
        ax: A matplotlib axes.
        curves: Curve name -> points ``{"alpha", "id", "ood_avg"}`` in order of
            ``alpha`` (a WiSE-FT sweep); optional ``id_std``/``ood_avg_std`` draw
            error bars (several seeds).
        points: Method key -> ``{"id": {"mean", "std"}, "ood_avg": {"mean", "std"}}``;
            each drawn as one marker with std error bars.
        labels: Display name by method key.
        keys: The methods of ``points`` to draw, in legend order (a key missing from
            ``points`` is skipped but keeps its marker slot).
        title: Axes title.
        annotate: Values of ``alpha`` written next to their curve point.
    """
    for name, curve in curves.items():
        xs = [float(c["id"]) for c in curve]
        ys = [float(c["ood_avg"]) for c in curve]
        xerr = [_std(c, "id") for c in curve]
        yerr = [_std(c, "ood_avg") for c in curve]
        if any(e is not None for e in (*xerr, *yerr)):
            ax.errorbar(
                xs,
                ys,
                xerr=[e or 0.0 for e in xerr],
                yerr=[e or 0.0 for e in yerr],
                fmt="-",
                marker=".",
                capsize=2,
                alpha=0.8,
                label=name,
            )
        else:
            ax.plot(xs, ys, "-", marker=".", alpha=0.8, label=name)
        for c in curve:
            if float(c["alpha"]) in annotate:
                ax.annotate(
                    f"{_ALPHA}={float(c['alpha']):g}",
                    (float(c["id"]), float(c["ood_avg"])),
                    fontsize=7,
                    xytext=(3, -9),
                    textcoords="offset points",
                )
    for i, key in enumerate(keys):
        if key not in points:
            continue
        r = points[key]
        ax.errorbar(
            r["id"]["mean"],
            r["ood_avg"]["mean"],
            xerr=r["id"]["std"],
            yerr=r["ood_avg"]["std"],
            fmt=MARKERS[i % len(MARKERS)],
            capsize=2,
            label=labels.get(key, key),
        )
    ax.set_xlabel("ID test accuracy (%)")
    ax.set_ylabel("OOD average accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")

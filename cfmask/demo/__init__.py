"""``cfmask demo``: Shifted Fashion-MNIST, an offline benchmark of robust fine-tuning.

See ``docs/demo.md``. The entry point is :func:`main`; the pieces are in
:mod:`cfmask.demo.data` (the benchmark), :mod:`cfmask.demo.teacher` (the pre-trained
model), :mod:`cfmask.demo.runner` (the methods) and :mod:`cfmask.demo.report`.

Scripts that build on the demo (the benchmarks in ``benchmarks/``) use the names
exported here, loaded on first access: the run profiles (:data:`PROFILES`), the
benchmark and its data (:func:`build_benchmark`, :func:`load_fashion_mnist`), the
shipped pre-trained weights (:data:`SHIPPED_WEIGHTS`), the runner
(:class:`Job`, :class:`JobRunner`, :func:`vanilla_method`, :func:`fd_method`) and
the statistics (:func:`choose_beta`, :func:`regime_checks`, :func:`ood_avg`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cfmask.core.lazy import lazy_attributes

if TYPE_CHECKING:
    from cfmask.demo.data import build_benchmark, load_fashion_mnist
    from cfmask.demo.pretrained import SHIPPED_WEIGHTS
    from cfmask.demo.report import ood_avg
    from cfmask.demo.runner import PROFILES, Job, JobRunner, fd_method, vanilla_method
    from cfmask.demo.stats import choose_beta, regime_checks

__all__ = (
    "PROFILES",
    "SHIPPED_WEIGHTS",
    "Job",
    "JobRunner",
    "build_benchmark",
    "choose_beta",
    "fd_method",
    "load_fashion_mnist",
    "main",
    "ood_avg",
    "regime_checks",
    "vanilla_method",
)

#: Public name → the demo module that defines it (imported on first access).
_PUBLIC_MODULES = {
    "PROFILES": "cfmask.demo.runner",
    "Job": "cfmask.demo.runner",
    "JobRunner": "cfmask.demo.runner",
    "fd_method": "cfmask.demo.runner",
    "vanilla_method": "cfmask.demo.runner",
    "build_benchmark": "cfmask.demo.data",
    "load_fashion_mnist": "cfmask.demo.data",
    "SHIPPED_WEIGHTS": "cfmask.demo.pretrained",
    "choose_beta": "cfmask.demo.stats",
    "regime_checks": "cfmask.demo.stats",
    "ood_avg": "cfmask.demo.report",
}

__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC_MODULES, lambda: globals())


def main(argv: list[str] | None = None) -> int:
    """Run ``cfmask demo`` (see :func:`cfmask.demo.app.main`).

    Args:
        argv: Arguments after ``demo``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    from cfmask.demo.app import main as app_main

    return app_main(argv)

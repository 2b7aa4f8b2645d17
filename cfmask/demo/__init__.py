"""``cfmask demo``: Shifted Fashion-MNIST, an offline benchmark of robust fine-tuning.

See ``docs/demo.md``. The entry point is :func:`main`; the pieces are in
:mod:`cfmask.demo.data` (the benchmark), :mod:`cfmask.demo.teacher` (the pre-trained
model), :mod:`cfmask.demo.runner` (the methods) and :mod:`cfmask.demo.report`.
"""

from __future__ import annotations

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    """Run ``cfmask demo`` (see :func:`cfmask.demo.app.main`).

    Args:
        argv: Arguments after ``demo``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    from cfmask.demo.app import main as app_main

    return app_main(argv)

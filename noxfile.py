"""Developer tasks. Every session runs in the project's single .venv.

The environment (torch with CUDA wheels, about 5.6 GB) is built once by
``scripts/setup-env.sh``; building one per nox session would cost minutes and
gigabytes each, so sessions reuse it (``venv_backend="none"``) and call its tools.
Run with ``.venv/bin/nox -s <session>``.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "none"

BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".venv", "bin")
ENV = {"HF_HUB_OFFLINE": "1", "JSONARGPARSE_DEPRECATION_WARNINGS": "off"}


def _setup(session: nox.Session) -> None:
    session.run("bash", "scripts/setup-env.sh", external=True)


def _tool(name: str) -> str:
    return os.path.join(BIN, name)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    _setup(session)
    session.run(_tool("ruff"), "check", ".", external=True)
    session.run(_tool("ruff"), "format", "--check", ".", external=True)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    _setup(session)
    session.run(_tool("mypy"), "cfmask", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """The default fast suite (add ``-- -m slow`` for the slow tests)."""
    _setup(session)
    session.run(_tool("python"), "-m", "pytest", *session.posargs, env=ENV, external=True)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs, nitpicky, warnings as errors."""
    _setup(session)
    session.run(
        _tool("sphinx-build"),
        "-n",
        "-T",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        external=True,
    )


@nox.session
def demo(session: nox.Session) -> None:
    """The offline benchmark (``-- --quick`` for the short profile)."""
    session.run("bash", "scripts/run-demo.sh", *session.posargs, external=True)


@nox.session
def benchmark(session: nox.Session) -> None:
    """Step throughput of every method (CPU tiny models by default)."""
    _setup(session)
    session.run(
        _tool("python"), "benchmarks/step_throughput.py", *session.posargs, env=ENV, external=True
    )

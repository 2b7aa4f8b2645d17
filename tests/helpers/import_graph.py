"""The package's internal import graph, read from the source with :mod:`ast`.

Every ``import`` and ``from ... import`` statement counts: module-level ones, the
ones under ``if TYPE_CHECKING:`` and the ones inside functions. An edge goes from
the importing module to the most specific ``cfmask`` module the statement names
(``from cfmask.data import masks`` → ``cfmask.data.masks``; ``from cfmask.data
import DataModule`` → ``cfmask.data``).

Run as a script to print the figures the layering docs quote::

    python tests/helpers/import_graph.py [PACKAGE_DIR]
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "cfmask"


@dataclass(frozen=True)
class Edge:
    """One internal import: ``source`` imports ``target``."""

    source: str
    target: str
    line: int
    in_function: bool
    type_checking: bool


def module_name(path: Path, package_dir: Path) -> str:
    """Dotted name of a source file (``cfmask/data/__init__.py`` → ``cfmask.data``)."""
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package: dotted name → source file."""
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}


def _walk(
    node: ast.AST, in_function: bool = False, type_checking: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function, type_checking
            continue
        inner_function = in_function or isinstance(
            child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        )
        guarded = type_checking or (
            isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
        )
        yield from _walk(child, inner_function, guarded)


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = source.split(".")
    drop = node.level - 1 if is_package else node.level
    base = base[: len(base) - drop] if drop else base
    return ".".join(base + ([node.module] if node.module else []))


def _targets(
    node: ast.Import | ast.ImportFrom, source: str, is_package: bool, known: Iterable[str]
) -> list[str]:
    known = set(known)
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _absolute(node, source, is_package)
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
            for alias in node.names
        ]
    found = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def edges(package_dir: Path = PACKAGE_DIR) -> list[Edge]:
    """Every internal import statement of the package, one edge per named module."""
    found = modules(package_dir)
    result = []
    for source, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, in_function, type_checking in _walk(tree):
            for target in _targets(node, source, is_package, found):
                if target != source:
                    result.append(Edge(source, target, node.lineno, in_function, type_checking))
    return result


def graph(all_edges: Iterable[Edge]) -> dict[str, set[str]]:
    """Adjacency sets of the distinct ``source → target`` pairs."""
    adjacency: dict[str, set[str]] = {}
    for edge in all_edges:
        adjacency.setdefault(edge.source, set()).add(edge.target)
        adjacency.setdefault(edge.target, set())
    return adjacency


def cycles(adjacency: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    knots: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(adjacency[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                knots.append(sorted(component))

    for node in sorted(adjacency):
        if node not in index:
            visit(node)
    return sorted(knots)


def summary(package_dir: Path = PACKAGE_DIR) -> dict[str, int]:
    """The structure figures: top-level modules, cycles, internal edges, function-level ones."""
    all_edges = edges(package_dir)
    pairs = {(e.source, e.target) for e in all_edges}
    in_function = {(e.source, e.target) for e in all_edges if e.in_function}
    top_level = [p for p in package_dir.glob("*.py") if p.name != "__init__.py"]
    return {
        "top-level modules": len(top_level),
        "subpackages": sum(1 for p in package_dir.iterdir() if (p / "__init__.py").exists()),
        "modules": len(modules(package_dir)),
        "internal import edges": len(pairs),
        "function-level internal import edges": len(in_function),
        "cycles (knots of modules)": len(cycles(graph(all_edges))),
    }


if __name__ == "__main__":
    target = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else PACKAGE_DIR
    for key, value in summary(target).items():
        print(f"{key}: {value}")
    for knot in cycles(graph(edges(target))):
        print("cycle:", " ↔ ".join(knot))

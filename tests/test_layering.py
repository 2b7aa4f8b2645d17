"""The package's layers: every import points down, and no modules import each other in a ring.

The rule is written in DEVELOPERS.md and docs/architecture.md. Every import statement
counts, at module level, under ``if TYPE_CHECKING:`` and inside functions
(``tests/helpers/import_graph.py`` reads them with ``ast``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cfmask.demo

from .helpers.import_graph import PACKAGE_DIR, ROOT, Edge, cycles, edges, graph, modules

#: Layer → rank, lowest first. A module may import its own layer and any layer of a
#: lower rank; layers that share a rank (data and backbones; the three component
#: packages) may not import each other.
LAYERS: dict[str, int] = {
    "core": 0,
    "functional": 1,
    "evaluation": 1,
    "data": 2,
    "backbones": 2,
    "masking": 3,
    "relevance": 3,
    "losses": 3,
    "training": 4,
    "weightspace": 5,
    "testing": 5,
    "api": 6,  # the package's own __init__ (public names, version) and _compat
    "demo": 7,
    "cli": 8,
    "main": 9,  # python -m cfmask
}


def layer_of(module: str) -> str:
    """The layer a ``cfmask`` module belongs to (its first sub-package)."""
    parts = module.split(".")
    if module in ("cfmask", "cfmask._compat"):
        return "api"
    if module == "cfmask.__main__":
        return "main"
    if parts[1] not in LAYERS:
        raise KeyError(f"{module} belongs to no layer: add its package to LAYERS")
    return parts[1]


def violations(all_edges: list[Edge]) -> list[str]:
    """One line per import that goes up a layer or sideways between two layers."""
    found = []
    for edge in all_edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source == target or LAYERS[target] < LAYERS[source]:
            continue
        where = "inside a function" if edge.in_function else "at module level"
        found.append(
            f"{edge.source} ({source}) imports {edge.target} ({target}) on line "
            f"{edge.line} {where}: a {source} module may import only lower layers"
        )
    return sorted(set(found))


def test_every_module_belongs_to_a_layer():
    for module in modules():
        assert layer_of(module) in LAYERS


def test_no_import_goes_up_or_sideways():
    assert violations(edges()) == []


def test_no_import_cycle():
    assert cycles(graph(edges())) == []


def test_no_internal_import_dodges_a_layer_inside_a_function():
    lazy = sorted(
        f"{e.source} -> {e.target} (line {e.line})"
        for e in edges()
        if e.in_function and layer_of(e.source) != "demo"
    )
    # cfmask.demo keeps its plotting and component imports local to the report
    # functions; everywhere else internal imports sit at module level.
    assert lazy == []


def test_the_data_layer_imports_no_model_code():
    model_layers = {"backbones", "masking", "relevance", "losses", "training", "weightspace"}
    offending = [
        (e.source, e.target)
        for e in edges()
        if layer_of(e.source) == "data" and layer_of(e.target) in model_layers
    ]
    assert offending == []


def test_the_checker_names_an_upward_edge_and_a_cycle():
    up = Edge("cfmask.data.folder", "cfmask.training.finetuner", 7, True, False)
    assert violations([up]) == [
        "cfmask.data.folder (data) imports cfmask.training.finetuner (training) on line 7 "
        "inside a function: a data module may import only lower layers"
    ]
    sideways = Edge("cfmask.data.transforms", "cfmask.backbones.base", 3, False, False)
    assert "a data module may import only lower layers" in violations([sideways])[0]
    ring = [
        Edge("cfmask.cli", "cfmask.cli.commands", 1, False, False),
        Edge("cfmask.cli.commands", "cfmask.cli.sweeps", 1, False, False),
        Edge("cfmask.cli.sweeps", "cfmask.cli", 1, True, False),
    ]
    assert cycles(graph(ring)) == [["cfmask.cli", "cfmask.cli.commands", "cfmask.cli.sweeps"]]


def test_the_graph_reads_relative_type_checking_and_function_imports(tmp_path):
    package = tmp_path / "cfmask"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("X = 1\n")
    (package / "low" / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import a\n"
        "if TYPE_CHECKING:\n    from cfmask.low.a import X\n"
        "def f():\n    import cfmask.low\n"
    )
    found = {(e.source, e.target, e.in_function, e.type_checking) for e in edges(package)}
    assert found == {
        ("cfmask.low.b", "cfmask.low.a", False, False),
        ("cfmask.low.b", "cfmask.low.a", False, True),
        ("cfmask.low.b", "cfmask.low", True, False),
    }


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_import_only_public_names(script: Path):
    private = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cfmask"):
            names = [node.module or ""] + [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("cfmask")]
        private += [n for n in names if any(part.startswith("_") for part in n.split("."))]
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cfmask.demo."):
            private.append(node.module or "")
        if isinstance(node, ast.ImportFrom) and node.module == "cfmask.demo":
            private += [a.name for a in node.names if a.name not in cfmask.demo.__all__]
    assert private == [], f"{script.name} imports internals: {private}"


def test_package_dir_is_the_checked_out_package():
    assert (PACKAGE_DIR / "__init__.py").is_file() and PACKAGE_DIR.parent == ROOT

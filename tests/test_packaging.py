"""Packaging metadata: safe pins, one version, licence, optional matplotlib."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import cfmask
from cfmask.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _requirement(name: str) -> Requirement:
    for line in PROJECT["dependencies"]:
        req = Requirement(line)
        if canonicalize_name(req.name) == canonicalize_name(name):
            return req
    raise AssertionError(f"{name} is not a dependency")


def test_compromised_lightning_releases_are_excluded():
    spec = _requirement("lightning").specifier
    assert not spec.contains("2.6.2") and not spec.contains("2.6.3")
    assert spec.contains("2.6.1") and spec.contains("2.6.6") and spec.contains("2.4.0")


def test_torch_has_the_weights_only_fix():
    spec = _requirement("torch").specifier
    assert not spec.contains("2.5.1") and spec.contains("2.6.0")


def test_open_clip_capped_below_next_major():
    spec = _requirement("open-clip-torch").specifier
    assert spec.contains("3.3.0") and not spec.contains("4.0.0")


def test_one_version_number():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "cfmask.__version__"}
    tree = ast.parse((ROOT / "cfmask" / "__init__.py").read_text())
    literal = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "__version__" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert literal == [cfmask.__version__]  # setuptools reads it statically


def test_version_flag_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.split() == ["cfmask", cfmask.__version__]


def test_licence_file_matches_the_declared_licence():
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text


def test_python_classifiers_agree_with_requires_python():
    requires = SpecifierSet(PROJECT["requires-python"])
    versions = [
        c.rsplit(" ", 1)[-1]
        for c in PROJECT["classifiers"]
        if c.startswith("Programming Language :: Python :: 3.")
    ]
    assert versions and all(requires.contains(v) for v in versions)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in versions


def test_project_urls():
    assert {"Documentation", "Source", "Issues"} <= set(PROJECT["urls"])


def test_readthedocs_config_builds_these_docs():
    config = yaml.safe_load((ROOT / ".readthedocs.yaml").read_text())
    assert config["version"] == 2
    assert (ROOT / config["sphinx"]["configuration"]).is_file()
    extras = config["python"]["install"][0]["extra_requirements"]
    assert set(extras) <= set(PROJECT["optional-dependencies"]) and "docs" in extras


def test_matplotlib_is_optional_and_imported_lazily():
    assert all(Requirement(r).name != "matplotlib" for r in PROJECT["dependencies"])
    extras = PROJECT["optional-dependencies"]
    assert any(Requirement(r).name == "matplotlib" for r in extras["plot"])
    assert "cfmask[plot]" in extras["demo"] and any("plot" in r for r in extras["dev"])
    for path in (ROOT / "cfmask").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: function bodies import on use
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "matplotlib" for n in names), path


def test_missing_matplotlib_gives_an_install_hint(monkeypatch):
    from cfmask.evaluation import plotting

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"cfmask\[plot\]"):
        plotting.pyplot()


def test_setup_script_installs_the_dev_extra():
    script = (ROOT / "scripts" / "setup-env.sh").read_text()
    assert "-e '.[dev]'" in script

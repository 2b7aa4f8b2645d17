"""The documentation's links and recipe paths point at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "docs").glob("*/*.md")])
PAGES = [p for p in PAGES if "_build" not in p.parts]

# [text](target) and [text](target "title"); images too.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CONFIG = re.compile(r"(?<![\w/.-])((?:examples/configs|configs)/[\w./-]+?\.ya?ml)\b")
BARE_RECIPE = re.compile(r"`((?:backbone|data|trainer|method|table1|smoke)/[\w.-]+\.ya?ml)`")


def _strip_code_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _relative_links(page: Path) -> list[str]:
    links = []
    for target in LINK.findall(_strip_code_fences(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, mailto:, in-page anchors
        links.append(target)
    return links


def test_pages_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/reproducing.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_exist(page: Path) -> None:
    missing = []
    for target in _relative_links(page):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_paths_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    paths = set()
    for path in CONFIG.findall(text):
        paths.add(path if path.startswith("examples/") else "examples/" + path)
    # Recipe files named relative to examples/configs/ (e.g. `table1/no_mask.yaml`).
    for path in BARE_RECIPE.findall(text):
        paths.add("examples/configs/" + path)
    # Shell loops in the docs name method files without the suffix.
    for path in re.findall(r"\b((?:method|table1)/[\w.-]+?)(?=\s|\\|;|$)", text, re.M):
        if not path.endswith((".yaml", ".yml")):
            paths.add(f"examples/configs/{path}.yaml")
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"{page.relative_to(ROOT)} names missing recipe files: {missing}"


def test_link_pattern() -> None:
    page = "[a](docs/x.md) [b](https://e.org) [c](#top) ![i](img.png) [d](y.md#sec)"
    assert LINK.findall(page) == ["docs/x.md", "https://e.org", "#top", "img.png", "y.md#sec"]

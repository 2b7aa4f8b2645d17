"""Sphinx configuration for the cfmask documentation.

Build (what ``nox -s docs`` runs)::

    .venv/bin/sphinx-build -n -T -W --keep-going -b html docs docs/_build/html

The build must pass offline, nitpicky and with warnings as errors. Intersphinx
inventories (Python, torch, Lightning, NumPy) are used when their hosts can be
reached; otherwise (or with ``CFMASK_DOCS_OFFLINE=1``) intersphinx is switched off
and references to those projects fall back to plain text through
``nitpick_ignore_regex`` below.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cfmask  # noqa: E402

# -- Project -------------------------------------------------------------------
project = "cfmask"
author = "cfmask developers"
copyright = "cfmask developers"
release = cfmask.__version__
version = release

# -- General -------------------------------------------------------------------
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
nitpicky = True

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc / napoleon (Google style) -----------------------------------------
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_class_signature = "separated"
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- intersphinx -----------------------------------------------------------------
_INVENTORIES = {
    "python": ("https://docs.python.org/3", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "lightning": ("https://lightning.ai/docs/pytorch/stable", None),
    "numpy": ("https://numpy.org/doc/stable", None),
}


def _reachable(url: str, timeout: float = 1.5) -> bool:
    host = url.split("/")[2]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


if os.environ.get("CFMASK_DOCS_OFFLINE") == "1":
    intersphinx_mapping: dict[str, tuple[str, Any]] = {}
else:
    intersphinx_mapping = {k: v for k, v in _INVENTORIES.items() if _reachable(v[0])}
intersphinx_timeout = 10

# External types that intersphinx resolves when online; offline (or for projects
# without a Sphinx inventory: timm, open_clip, rich, jsonargparse, PIL) they stay
# plain text instead of failing the nitpicky build.
_EXTERNAL = (
    r"(torch|lightning|pytorch_lightning|torchmetrics|torchvision|timm|open_clip"
    r"|numpy|np|PIL|rich|jsonargparse|argparse|matplotlib)"
)
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL + r"(\..*)?"),
    # Short names produced by type hints and napoleon for common external types.
    (
        r"py:.*",
        r"(Tensor|Module|Generator|Dataset|DataLoader|LightningModule|LightningDataModule"
        r"|Trainer|Strategy|Callback|Optimizer|LRScheduler|Metric|Image|Table|Console|ArgsType"
        r"|LightningArgumentParser|device|dtype|Size|Parameter|nn\..*)",
    ),
]
if not intersphinx_mapping:
    # Python's standard library: only resolvable through intersphinx.
    nitpick_ignore_regex += [
        (
            r"py:.*",
            r"(collections|collections\.abc|typing|pathlib|os|io|json|csv|copy|"
            r"importlib|dataclasses|enum|abc|warnings|contextlib|functools|types)(\..*)?",
        ),
        (
            r"py:.*",
            r"(Path|PathLike|Sequence|Mapping|Iterable|Iterator|Callable|Any|Literal|"
            r"ClassVar|Optional|Union|Self|TypeVar|Enum|Protocol|datetime)",
        ),
        (
            r"py:(class|exc|obj|data|func)",
            r"(int|float|str|bool|bytes|list|dict|tuple|set|"
            r"frozenset|object|type|None|NoneType|Ellipsis|ValueError|TypeError|KeyError|"
            r"RuntimeError|AssertionError|AttributeError|ImportError|FileNotFoundError|"
            r"OSError|UserWarning|Warning|Exception|NotImplementedError|IndexError)",
        ),
    ]

# -- HTML --------------------------------------------------------------------------
html_theme = "furo"
html_title = f"cfmask {release}"
html_static_path: list[str] = []


# -- Resolving cfmask names ---------------------------------------------------------
# Docstrings name objects the way readers import them (``cfmask.masking.Masker``)
# or by a short name that is only unambiguous in the source file (``Component``,
# ``config``). Type hints and base classes use the defining module
# (``cfmask.masking.base.Masker``). The API pages document each object once, under
# its public path; this handler points the remaining cfmask references at that
# entry when exactly one documented object (or one in the same module) matches.
def _resolve_cfmask(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode

    target: str = node["reftarget"].lstrip("~.")
    if not target or target.split(".")[0] not in ("cfmask", *(_short_heads(target))):
        return None
    objects = env.get_domain("py").objects
    parts = target.split(".")
    for start in range(len(parts)):
        suffix = ".".join(parts[start:])
        if start and suffix.split(".")[0].startswith("_"):
            continue
        matches = sorted(
            name for name in objects if name.startswith("cfmask") and name.endswith("." + suffix)
        )
        if not matches:
            continue
        module = node.get("py:module") or ""
        context = ".".join(p for p in (module, node.get("py:class")) if p)
        in_class = [m for m in matches if context and m.startswith(context + ".")]
        in_module = [m for m in matches if module and m.startswith(module + ".")]
        if len(matches) == 1:
            chosen = matches[0]
        elif in_class or in_module:
            chosen = (in_class or in_module)[0]
        elif start == len(parts) - 1:
            chosen = matches[0]
        else:
            continue
        entry = objects[chosen]
        return make_refnode(
            app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, chosen
        )
    return None


def _short_heads(target: str) -> tuple[str, ...]:
    # Unqualified names (``Component.init_args``, ``config``) are looked up too.
    head = target.split(".")[0]
    return (head,) if not _is_external(head) else ()


def _is_external(head: str) -> bool:
    import builtins
    import re

    return re.fullmatch(_EXTERNAL, head) is not None or hasattr(builtins, head)


def _public_bases(app: Any, name: str, obj: Any, options: Any, bases: list[type]) -> None:
    # Show a private cfmask base class as its own public bases.
    i = 0
    while i < len(bases):
        base = bases[i]
        if base.__name__.startswith("_") and base.__module__.startswith("cfmask"):
            bases[i : i + 1] = [b for b in base.__bases__ if b not in bases]
        else:
            i += 1


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_cfmask)
    app.connect("autodoc-process-bases", _public_bases)

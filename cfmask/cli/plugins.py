"""Short class names for configs: the built-in component modules and installed plugins.

Importing a module makes its ``Masker``/``Refiller``/... subclasses known to
jsonargparse, so a config can name them by class name alone
(``--model.masker ObjectMasker``). Installed packages add theirs through the
``cfmask.plugins`` entry-point group. Both :mod:`cfmask.cli` and
:mod:`cfmask.cli.sweeps` call :func:`load_plugins` before they parse a config.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points

__all__ = ("PLUGIN_GROUP", "load_plugins")

PLUGIN_GROUP = "cfmask.plugins"
_BUILTIN_MODULES = (
    "cfmask.backbones.openclip_vit",
    "cfmask.backbones.timm_vit",
    "cfmask.relevance",
    "cfmask.masking",
    "cfmask.losses",
    "cfmask.training.callbacks",
    "cfmask.data.synthetic",
    "cfmask.data",
)


def load_plugins() -> list[str]:
    """Import the built-in component modules and every ``cfmask.plugins`` entry point.

    Importing a module makes its ``Masker``/``Refiller``/... subclasses known to
    jsonargparse, so configs can name them by class name alone.

    Returns:
        The names of the entry points that were loaded.
    """
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as err:  # a broken plugin must not break the CLI
            warnings.warn(
                f"could not load cfmask plugin {ep.name!r} ({ep.value}): {err}",
                stacklevel=2,
            )
            continue
        loaded.append(ep.name)
    return loaded

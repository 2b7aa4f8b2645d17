"""Old module paths, kept importable for one release with a ``DeprecationWarning``.

Before the package was arranged in layers, its modules sat directly under
``cfmask/`` (``cfmask.finetuner``, ``cfmask.callbacks``, ...). Configs,
checkpoints and scripts may still name them. :func:`install` puts a finder on
:data:`sys.meta_path` that answers an old name with the module at its new path
(the very same module object, so classes compare equal) and warns once per
import, naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

__all__ = ("MOVED_MODULES", "install")

#: Old module path → the module that now holds its contents.
MOVED_MODULES: dict[str, str] = {
    "cfmask._lazy": "cfmask.core.lazy",
    "cfmask.components": "cfmask.core.components",
    "cfmask.validation": "cfmask.core.validation",
    "cfmask.heads": "cfmask.backbones.heads",
    "cfmask.clip_text": "cfmask.backbones.clip_text",
    "cfmask.weights": "cfmask.backbones.state_dicts",
    "cfmask.synthetic": "cfmask.data.synthetic",
    "cfmask.eval_sets": "cfmask.evaluation.eval_sets",
    "cfmask.metrics": "cfmask.evaluation.metrics",
    "cfmask.reporting": "cfmask.evaluation.reporting",
    "cfmask.plotting": "cfmask.evaluation.plotting",
    "cfmask.visualization": "cfmask.training.visualization",
    "cfmask.objective": "cfmask.training.objective",
    "cfmask.finetuner": "cfmask.training.finetuner",
    "cfmask.head_setup": "cfmask.training.head_setup",
    "cfmask.checkpoints": "cfmask.training.checkpoints",
    "cfmask.callbacks": "cfmask.training.callbacks",
    "cfmask.prediction": "cfmask.training.prediction",
    "cfmask.ensembles": "cfmask.weightspace.ensembles",
    "cfmask.export": "cfmask.weightspace.export",
    "cfmask.commands": "cfmask.cli.commands",
    "cfmask.sweeps": "cfmask.cli.sweeps",
}


class _MovedModuleLoader(importlib.abc.Loader):
    """Hands out the module at the new path instead of creating one."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} is deprecated and will be removed in the next release; "
            f"import {self.new_name} instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new_name)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run; give the module back the spec of its new path.

        The import system stamps the old name's spec on the module after
        :meth:`create_module`; the module keeps describing its real location.
        """
        if self._spec is not None:
            module.__spec__ = self._spec


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old module paths listed in :data:`MOVED_MODULES`."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        new_name = MOVED_MODULES.get(fullname)
        if new_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new_name))


def install() -> None:
    """Put the finder of old module paths first on :data:`sys.meta_path` (once).

    First, so that no other finder (an editable install's, say) answers an old
    name with a stale copy of a module.
    """
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())

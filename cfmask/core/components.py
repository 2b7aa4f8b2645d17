"""The contract shared by every pluggable part of cfmask.

Every component (backbone adapter, relevance map, masker, refiller, distillation
loss) stores each of its ``__init__`` arguments, unchanged, under a public
attribute of the same name. From that one rule follows :meth:`Component.config`,
which returns the ``{"class_path", "init_args"}`` mapping that LightningCLI writes
into checkpoints. The fine-tuner stores these mappings as hyper-parameters, so a
checkpoint rebuilds every component from plain data and loads under torch's
default ``weights_only=True``, whether the run was started from the CLI or from
Python.
"""

from __future__ import annotations

import inspect
from abc import ABC
from typing import Any

from torch import nn

__all__ = ("Component", "component_config")


class Component(nn.Module, ABC):
    """Base class for every pluggable cfmask part.

    Subclasses must store each ``__init__`` argument as a public attribute of the
    same name (the scikit-learn ``get_params`` rule). Values must be plain data
    (numbers, strings, lists, dicts, ``None``) or other components, so that the
    configuration round-trips through YAML and checkpoints.

    Example:
        >>> from cfmask.masking import ObjectMasker
        >>> ObjectMasker(threshold=0.3).config()["init_args"]
        {'threshold': 0.3}
    """

    def init_args(self) -> dict[str, Any]:
        """Return the arguments this component was built with.

        Returns:
            A mapping from each ``__init__`` parameter name to its current value;
            nested components are replaced by their own :meth:`config`.

        Raises:
            AttributeError: If a subclass broke the contract and did not store an
                ``__init__`` argument under its own name.
        """
        params = inspect.signature(type(self).__init__).parameters
        args: dict[str, Any] = {}
        for name, param in params.items():
            if name == "self" or param.kind not in (
                param.POSITIONAL_OR_KEYWORD,
                param.KEYWORD_ONLY,
            ):
                continue
            if not hasattr(self, name):
                raise AttributeError(
                    f"{type(self).__name__} does not store its __init__ argument "
                    f"{name!r} as an attribute; every Component must keep each "
                    f"argument under its own name so that checkpoints can rebuild it."
                )
            value = getattr(self, name)
            args[name] = _plain(value)
        return args

    def config(self) -> dict[str, Any]:
        """Return the ``{"class_path", "init_args"}`` mapping that rebuilds this component.

        Returns:
            The same format LightningCLI writes for a nested class argument.
        """
        return component_config(self)

    def extra_repr(self) -> str:
        """Show the init arguments in ``repr``."""
        return ", ".join(f"{k}={v!r}" for k, v in self.init_args().items())


def component_config(component: Component) -> dict[str, Any]:
    """Return the LightningCLI-style configuration of ``component``.

    Args:
        component: Any :class:`Component`.

    Returns:
        ``{"class_path": "<module>.<QualName>", "init_args": {...}}``.
    """
    cls = type(component)
    return {
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": component.init_args(),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Component):
        return value.config()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value

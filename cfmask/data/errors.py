"""The errors and warnings of the data layer, below every module that raises them.

:mod:`cfmask.data.folder` (images) and :mod:`cfmask.data.masks` (object masks) both
raise :class:`CorruptImageError`; defining the classes here lets each import the
other's helpers in one direction only. They stay importable from
:mod:`cfmask.data.folder` and :mod:`cfmask.data`.
"""

from __future__ import annotations

__all__ = ("CorruptImageError", "DataLayoutError", "DataLayoutWarning", "TruncatedDatasetWarning")


class DataLayoutError(FileNotFoundError):
    """A data set on disk is missing or does not have the expected layout."""


class CorruptImageError(RuntimeError):
    """An image file exists but cannot be decoded."""


class DataLayoutWarning(UserWarning):
    """Something about a data set on disk is unusual but usable."""


class TruncatedDatasetWarning(DataLayoutWarning):
    """A data set holds fewer (or more) images than the published count."""

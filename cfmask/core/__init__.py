"""Contracts and helpers every layer may import: the lowest layer of cfmask.

:mod:`~cfmask.core.components` (the :class:`~cfmask.core.components.Component`
base of every pluggable part), :mod:`~cfmask.core.validation` (argument checks),
:mod:`~cfmask.core.data_config` (how a backbone wants its images prepared, read by
both the data and the model layers) and :mod:`~cfmask.core.lazy` (attributes of a
package imported on first access). Nothing here imports another cfmask module
outside ``core``.
"""

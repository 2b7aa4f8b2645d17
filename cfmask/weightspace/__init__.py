"""Tools that work on trained weights: WiSE-FT mixtures, soups and export.

:mod:`~cfmask.weightspace.ensembles` (weight-space ensembles of a fine-tuned
checkpoint with its start, and uniform soups) and :mod:`~cfmask.weightspace.export`
(a checkpoint's weights as safetensors for timm or open_clip).
"""

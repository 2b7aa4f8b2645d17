"""Maskers (which patches to replace) and refillers (what to put there)."""

from cfmask.masking.base import Counterfactual, Masker, Refiller
from cfmask.masking.maskers import ContextMasker, ObjectMasker, RandomMasker, SegmentationMasker
from cfmask.masking.refillers import (
    AttentionMaskRefiller,
    ConstantRefiller,
    MultiImageRefiller,
    SingleImageRefiller,
    TokenDropRefiller,
)

__all__ = (
    "AttentionMaskRefiller",
    "ConstantRefiller",
    "ContextMasker",
    "Counterfactual",
    "Masker",
    "MultiImageRefiller",
    "ObjectMasker",
    "RandomMasker",
    "Refiller",
    "SegmentationMasker",
    "SingleImageRefiller",
    "TokenDropRefiller",
)

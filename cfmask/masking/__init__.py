"""Maskers (which patches to replace) and refillers (what to put there)."""

from cfmask.masking.base import Counterfactual, Masker, Refiller

__all__ = ("Counterfactual", "Masker", "Refiller")

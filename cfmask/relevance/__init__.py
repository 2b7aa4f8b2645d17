"""Relevance maps: per-patch class activation scores."""

from cfmask.relevance.base import RelevanceMap

__all__ = ("RelevanceMap",)

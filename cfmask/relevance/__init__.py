"""Relevance maps: per-patch class activation scores."""

from cfmask.relevance.attention import AttentionGradRelevance, AttentionRolloutRelevance
from cfmask.relevance.base import RelevanceMap

__all__ = ("AttentionGradRelevance", "AttentionRolloutRelevance", "RelevanceMap")

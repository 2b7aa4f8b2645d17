"""Relevance maps: per-patch class activation scores."""

from cfmask.relevance.attention import AttentionGradRelevance, AttentionRolloutRelevance
from cfmask.relevance.base import RelevanceMap, RelevanceWithOutputs

__all__ = (
    "AttentionGradRelevance",
    "AttentionRolloutRelevance",
    "RelevanceMap",
    "RelevanceWithOutputs",
)

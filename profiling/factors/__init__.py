"""Person and item factors learned from implicit feedback (recency-weighted purchases)."""

from profiling.factors._als import ImplicitALS
from profiling.factors._feedback import recency_weighted_counts

__all__ = ["ImplicitALS", "recency_weighted_counts"]

"""Exact batch top-K scoring: every person against the whole catalogue, with exclusions, streamed out.

See ``top_k_batches`` for the kernel (compiled with numba) and ``eligibility_by_province`` for
which items a person may be shown.
"""

from profiling.scoring._eligibility import ItemEligibility, eligibility_by_province
from profiling.scoring._top_k import TOP_K_SCHEMA, TopK, top_k_batches, top_k_record_batches

__all__ = [
    "TOP_K_SCHEMA",
    "ItemEligibility",
    "TopK",
    "eligibility_by_province",
    "top_k_batches",
    "top_k_record_batches",
]

"""Everything about releases: differentially private aggregates and the privacy budget."""

__all__: list[str] = []

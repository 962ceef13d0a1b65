"""Which items each person may be shown: catalogue state and the provinces an item is served in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["ItemEligibility", "eligibility_by_province"]


@dataclass(frozen=True)
class ItemEligibility:
    """Items allowed per group of persons.

    ``allowed[g, i]`` says whether item ``i`` may be shown to persons of group ``g``;
    ``person_group[p]`` is the group of person ``p``. Persons are grouped (by province, say)
    so the table stays small: groups x items booleans, not persons x items.
    """

    allowed: np.ndarray  # bool, groups x items
    person_group: np.ndarray  # int32, persons

    def __post_init__(self) -> None:
        allowed = np.asarray(self.allowed)
        person_group = np.asarray(self.person_group)
        if allowed.ndim != 2 or allowed.dtype != np.bool_:
            raise ValueError(f"eligibility.allowed must be a 2-D boolean array (groups x items), "
                             f"got shape {allowed.shape} of {allowed.dtype}")
        if person_group.ndim != 1 or not np.issubdtype(person_group.dtype, np.integer):
            raise ValueError(f"eligibility.person_group must be a 1-D integer array, got shape "
                             f"{person_group.shape} of {person_group.dtype}")
        if person_group.size and (person_group.min() < 0 or person_group.max() >= allowed.shape[0]):
            raise ValueError(f"eligibility.person_group holds group numbers outside 0..{allowed.shape[0] - 1}, "
                             f"the rows of eligibility.allowed")
        object.__setattr__(self, "allowed", np.ascontiguousarray(allowed))
        object.__setattr__(self, "person_group", np.ascontiguousarray(person_group, dtype=np.int32))

    @classmethod
    def everything(cls, persons: int, items: int) -> ItemEligibility:
        """Every item allowed for every person."""
        return cls(np.ones((1, items), dtype=bool), np.zeros(persons, dtype=np.int32))


def eligibility_by_province(served_provinces: Sequence[Sequence[str] | None], active: Sequence[bool],
                            person_province: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> ItemEligibility:
    """Eligibility from the catalogue's ``served_provinces`` and ``active`` columns.

    An inactive item is allowed to nobody. An item whose ``served_provinces`` is null is served
    nationwide; otherwise it is allowed only to persons whose 2-digit province code is listed.
    A person whose province is unknown (null) is shown only nationwide items, since nothing says
    a regional item reaches them. Groups: 0 for unknown, then one per province code in sorted
    order. ``person_province`` may be an Arrow string array (grouped without a Python loop).

    >>> e = eligibility_by_province([None, ["11"], ["31", "11"]], [True, True, False], ["11", "31", None])
    >>> e.allowed[e.person_group].astype(int).tolist()
    [[1, 1, 0], [1, 0, 0], [1, 0, 0]]
    """
    served = list(served_provinces)
    active_mask = np.asarray(active, dtype=bool)
    if active_mask.shape != (len(served),):
        raise ValueError(f"served_provinces has {len(served)} items but active has {active_mask.size}")
    provinces = _province_strings(person_province)
    present = pc.unique(provinces.drop_null())
    codes = present.take(pc.sort_indices(present))
    group_of = {code: g + 1 for g, code in enumerate(codes.to_pylist())}
    nationwide = np.array([s is None for s in served], dtype=bool)
    allowed = np.repeat((nationwide & active_mask)[None, :], len(codes) + 1, axis=0)
    for item, where in enumerate(served):
        if where is None or not active_mask[item]:
            continue
        for code in where:
            group = group_of.get(str(code))
            if group is not None:
                allowed[group, item] = True
    # rows: persons -> 0 (unknown province) or 1 + the province's place among the sorted codes
    person_group = pc.index_in(provinces, value_set=codes).fill_null(-1).to_numpy(zero_copy_only=False) + 1
    return ItemEligibility(allowed, person_group.astype(np.int32))


def _province_strings(person_province: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """The persons' provinces as one Arrow string array (nulls for unknown)."""
    if isinstance(person_province, pa.ChunkedArray):
        person_province = person_province.combine_chunks()
    if isinstance(person_province, pa.Array):
        return person_province if person_province.type == pa.string() else person_province.cast(pa.string())
    return pa.array([None if p is None else str(p) for p in person_province], pa.string())

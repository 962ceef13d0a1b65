"""Top-K scoring on both engines against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from engines._frames import person_ids
from pipelines.engine_jobs import score_top_k
from profiling.scoring import TOP_K_SCHEMA


def brute_force(person_factors: np.ndarray, item_factors: np.ndarray, k: int,
                excluded: list[set[int]] | None = None) -> list[list[int]]:
    """Every score computed, sorted by score (higher first), ties by lower item index; excluded items skipped."""
    scores = person_factors.astype(np.float32) @ item_factors.astype(np.float32).T
    excluded = excluded or [set()] * len(scores)
    return [[i for i in np.lexsort((np.arange(len(row)), -row)) if i not in skip][:k]
            for row, skip in zip(scores, excluded, strict=True)]


def _persons(count: int, dims: int, seed: int) -> tuple[list[str], np.ndarray, pa.Table]:
    rng = np.random.default_rng(seed)
    ids = person_ids(count, seed)
    factors = rng.normal(size=(count, dims)).astype(np.float32)
    table = pa.table({"person_id": pa.array(ids, pa.string()),
                      "factors": pa.array(list(factors), pa.list_(pa.float32()))})
    return ids, factors, table


def test_top_k_is_the_brute_force_ranking(engine):
    ids, person_factors, table = _persons(90, dims=6, seed=21)
    rng = np.random.default_rng(22)
    item_factors = rng.normal(size=(40, 6)).astype(np.float32)
    item_factors[7] = item_factors[3]              # a tie: item 3 ranks before item 7
    item_ids = [f"item-{i}" for i in range(40)]
    excluded = [set(rng.choice(40, rng.integers(0, 6), replace=False).tolist()) for _ in ids]
    bought = [[item_ids[i] for i in sorted(skip)] + ["retired-item"] for skip in excluded]
    table = table.append_column("bought", pa.array(bought, pa.list_(pa.string())))
    frame = engine.from_table(table, key="person_id", partitions=3)
    result = engine.collect(score_top_k(engine, frame, item_ids=item_ids, item_factors=item_factors, k=5,
                                        exclude="bought"))
    assert result.schema.equals(TOP_K_SCHEMA)
    rows = result.to_pandas().sort_values(["person_id", "rank"])
    # rows: (person_id, item_id, score, rank), k per person
    expected = brute_force(person_factors, item_factors, 5, excluded)
    for person, ranked in zip(ids, expected, strict=True):
        mine = rows[rows["person_id"] == person]
        assert mine["rank"].tolist() == [1, 2, 3, 4, 5]
        assert mine["item_id"].tolist() == [item_ids[i] for i in ranked]
        assert np.allclose(mine["score"], person_factors[ids.index(person)] @ item_factors[ranked].T, rtol=1e-5)


def test_a_person_with_the_wrong_number_of_factors_is_named(engine):
    table = pa.table({"person_id": pa.array(person_ids(3, seed=23)),
                      "factors": pa.array([[1.0, 2.0], [1.0], [0.5, 0.5]], pa.list_(pa.float32()))})
    frame = engine.from_table(table, key="person_id", partitions=1)
    with pytest.raises(Exception, match=r"column 'factors' row \d \(person '[0-9a-f]{32}'\) holds 1 factors; the "
                                        r"item factors have 2"):
        engine.collect(score_top_k(engine, frame, item_ids=["a", "b"], item_factors=np.ones((2, 2)), k=1))


def test_item_ids_must_match_item_factors(engine):
    frame = engine.from_table(_persons(3, dims=2, seed=24)[2], key="person_id", partitions=1)
    with pytest.raises(ValueError, match=r"3 item ids do not match item factors of shape \(2, 2\)"):
        score_top_k(engine, frame, item_ids=["a", "b", "c"], item_factors=np.ones((2, 2)), k=1)


def test_items_not_allowed_to_a_persons_group_are_never_shown(engine):
    ids, person_factors, table = _persons(60, dims=4, seed=25)
    rng = np.random.default_rng(26)
    item_factors = rng.normal(size=(30, 4)).astype(np.float32)
    allowed = rng.random((3, 30)) < 0.5
    allowed[2] = False                             # a group allowed nothing gets no list
    group = rng.integers(0, 3, len(ids)).astype(np.int32)
    table = table.append_column("group", pa.array(group))
    frame = engine.from_table(table, key="person_id", partitions=3)
    result = engine.collect(score_top_k(engine, frame, item_ids=[f"i{i}" for i in range(30)],
                                        item_factors=item_factors, k=4, group="group", allowed=allowed))
    rows = result.to_pandas().sort_values(["person_id", "rank"])
    not_allowed = [set(np.flatnonzero(~allowed[g]).tolist()) for g in group]
    expected = brute_force(person_factors, item_factors, 4, not_allowed)
    for person, ranked in zip(ids, expected, strict=True):
        assert rows[rows["person_id"] == person]["item_id"].tolist() == [f"i{i}" for i in ranked]
    assert not rows["person_id"].isin([p for p, g in zip(ids, group, strict=True) if g == 2]).any()


def test_a_group_outside_the_allowed_matrix_is_named(engine):
    table = _persons(3, dims=2, seed=27)[2].append_column("group", pa.array([0, 5, 1], pa.int32()))
    frame = engine.from_table(table, key="person_id", partitions=1)
    with pytest.raises(Exception, match=r"column 'group' row 1 \(person '[0-9a-f]{32}'\) holds group 5; the allowed "
                                        r"matrix has groups 0..1"):
        engine.collect(score_top_k(engine, frame, item_ids=["a", "b"], item_factors=np.ones((2, 2)), k=1,
                                   group="group", allowed=np.ones((2, 2), dtype=bool)))


def test_group_and_allowed_come_together(engine):
    frame = engine.from_table(_persons(3, dims=2, seed=28)[2], key="person_id", partitions=1)
    with pytest.raises(ValueError, match="give group .* and allowed together"):
        score_top_k(engine, frame, item_ids=["a", "b"], item_factors=np.ones((2, 2)), k=1, group="group")
    with pytest.raises(ValueError, match=r"allowed must be a groups x items boolean matrix with 2 items"):
        score_top_k(engine, frame, item_ids=["a", "b"], item_factors=np.ones((2, 2)), k=1, group="group",
                    allowed=np.ones((2, 3), dtype=bool))

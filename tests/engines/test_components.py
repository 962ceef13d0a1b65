"""Connected components on both engines: the same (vertex, component) rows as scipy on chains, cycles, many
components and random graphs; on Spark by large-star/small-star."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from profiling.errors import SchemaError


def reference(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """vertex -> least vertex of its component, by scipy on integer codes (no engine code involved)."""
    names = sorted({name for pair in pairs for name in pair})
    code = {name: i for i, name in enumerate(names)}
    rows = [code[a] for a, _ in pairs]
    cols = [code[b] for _, b in pairs]
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(graph, directed=False)
    least = {}
    for name, label in zip(names, labels, strict=True):
        least.setdefault(label, name)    # names are sorted: the first seen is the least
    return {name: least[label] for name, label in zip(names, labels, strict=True)}


def components(engine, pairs: list[tuple[str, str]], partitions: int = 3) -> dict[str, str]:
    edges = pa.table({"u": pa.array([a for a, _ in pairs], pa.string()),
                      "v": pa.array([b for _, b in pairs], pa.string())})
    frame = engine.connected_components(engine.from_table(edges, key="u", partitions=partitions))
    assert frame.key == "vertex"
    table = engine.collect(frame)
    assert table.schema.names == ["vertex", "component"]
    result = dict(zip(table["vertex"].to_pylist(), table["component"].to_pylist(), strict=True))
    assert len(result) == table.num_rows       # one row per vertex
    return result


def name(i: int) -> str:
    return f"v{i:03d}"


GRAPHS = {
    # a chain whose least vertex is in the middle, numbered against the order of the walk
    "chain": [(name((7 * i) % 20), name((7 * (i + 1)) % 20)) for i in range(19)],
    "cycle": [(name(i), name((i + 1) % 12)) for i in range(12)],
    "many": [(name(i), name(i + 1)) for i in range(0, 30, 3)] + [(name(40), name(40)), (name(41), name(42))],
    "star": [(name(50), name(i)) for i in range(10)] + [(name(i), name(50)) for i in range(5)],
    "binary_tree": [(name(i), name(2 * i + 1)) for i in range(15)] + [(name(i), name(2 * i + 2)) for i in range(15)],
}


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_components_are_scipys_on_every_engine(engine, graph):
    pairs = GRAPHS[graph]
    assert components(engine, pairs) == reference(pairs)


def test_a_loop_alone_is_its_own_component_and_null_ends_are_ignored(engine):
    edges = pa.table({"a": pa.array(["x", "y", None, "q"], pa.string()),
                      "b": pa.array(["x", "z", "w", None], pa.string())})
    table = engine.collect(engine.connected_components(engine.from_table(edges, key=None), ends=("a", "b")))
    assert sorted(table.to_pylist(), key=lambda r: r["vertex"]) == [
        {"vertex": "x", "component": "x"}, {"vertex": "y", "component": "y"}, {"vertex": "z", "component": "y"}]


def test_no_edges_no_components(engine):
    edges = pa.table({"u": pa.array([], pa.string()), "v": pa.array([], pa.string())})
    assert engine.collect(engine.connected_components(engine.from_table(edges, key=None))).num_rows == 0


def test_edges_need_two_string_columns(engine):
    frame = engine.from_table(pa.table({"u": ["a"], "v": [1]}), key=None)
    with pytest.raises(SchemaError, match="edge column 'v' must hold vertex names as strings"):
        engine.connected_components(frame)
    with pytest.raises(SchemaError, match="no column 'w'"):
        engine.connected_components(frame, ends=("u", "w"))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 24), st.integers(0, 24)), min_size=1, max_size=30))
def test_random_graphs_match_scipy(engine, pairs):
    pairs = [(name(a), name(b)) for a, b in pairs]
    assert components(engine, pairs) == reference(pairs)

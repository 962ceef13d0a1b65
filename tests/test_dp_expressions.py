"""Row expressions, key sets and group codes against plain per-row references (hypothesis).

The vectorized evaluator of ``dp._expressions`` must give, row by row, what a plain Python
evaluation of the same formula on that row alone gives: that is what makes a filter or a
derived column safe before bounding (a row's value depends on that row only).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp import KeySet, PrivacyParameterError, QueryPlan
from dp._expressions import ExpressionError, parse_expression
from dp._totals import _public_groups, _selected_codes

KINDS = {"a": "numeric", "b": "numeric", "t": "text", "f": "boolean"}
WORDS = ["x", "y", "Xy", "z"]

# expressions as (text, per-row reference function) ------------------------------------------------------------


def _number(value):
    return None if value is None or not math.isfinite(value) else value


def _arith(op, x, y):
    if x is None or y is None:
        return None
    try:
        return _number({"+": x + y, "-": x - y, "*": x * y}[op] if op != "/" else x / y)
    except (ZeroDivisionError, OverflowError):
        return None


def _order(op, x, y):
    if x is None or y is None:
        return False
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y, "==": x == y, "!=": x != y}[op]


numeric_leaf = st.one_of(
    st.sampled_from(["a", "b"]).map(lambda c: (c, lambda row, c=c: row[c])),
    st.integers(-5, 5).map(lambda v: (str(v), lambda row, v=v: float(v))),
    st.sampled_from([0.5, 2.25, -1.5]).map(lambda v: (repr(v), lambda row, v=v: v)),
)
text_leaf = st.one_of(st.just(("t", lambda row: row["t"])),
                      st.sampled_from(WORDS).map(lambda w: (repr(w), lambda row, w=w: w)))


def _numeric(children):
    binary = st.tuples(st.sampled_from("+-*/"), children, children).map(
        lambda p: (f"({p[1][0]} {p[0]} {p[2][0]})", lambda row, p=p: _arith(p[0], p[1][1](row), p[2][1](row))))
    negate = children.map(lambda c: (f"(-{c[0]})", lambda row, c=c: None if c[1](row) is None else -c[1](row)))
    absolute = children.map(lambda c: (f"abs({c[0]})", lambda row, c=c: None if c[1](row) is None else abs(c[1](row))))
    filled = st.tuples(children, st.integers(-3, 3)).map(
        lambda p: (f"fill_null({p[0][0]}, {p[1]})",
                   lambda row, p=p: float(p[1]) if p[0][1](row) is None else p[0][1](row)))
    return st.one_of(binary, negate, absolute, filled)


numeric = st.recursive(numeric_leaf, _numeric, max_leaves=6)
text = st.one_of(text_leaf, text_leaf.map(lambda c: (f"lower({c[0]})",
                                                     lambda row, c=c: None if c[1](row) is None else c[1](row).lower())),
                 st.sampled_from(WORDS).map(lambda w: (f"fill_null(t, {w!r})",
                                                       lambda row, w=w: w if row["t"] is None else row["t"])))


def _boolean_leaves():
    compare_numbers = st.tuples(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), numeric, numeric).map(
        lambda p: (f"({p[1][0]} {p[0]} {p[2][0]})", lambda row, p=p: _order(p[0], p[1][1](row), p[2][1](row))))
    compare_text = st.tuples(st.sampled_from(["==", "!=", "<", ">="]), text, text).map(
        lambda p: (f"({p[1][0]} {p[0]} {p[2][0]})", lambda row, p=p: _order(p[0], p[1][1](row), p[2][1](row))))
    member = st.tuples(text, st.lists(st.sampled_from(WORDS), min_size=1, max_size=3), st.booleans()).map(
        lambda p: (f"({p[0][0]} {'not in' if p[2] else 'in'} {tuple(p[1])!r})",
                   lambda row, p=p: p[0][1](row) is not None and ((p[0][1](row) in p[1]) != p[2])))
    null = st.one_of(numeric, text).map(lambda c: (f"is_null({c[0]})", lambda row, c=c: c[1](row) is None))
    flag = st.just(("f", lambda row: row["f"]))
    return st.one_of(compare_numbers, compare_text, member, null, flag,
                     st.sampled_from([True, False]).map(lambda v: (repr(v), lambda row, v=v: v)))


def _boolean(children):
    both = st.tuples(st.sampled_from(["and", "or"]), children, children).map(
        lambda p: (f"({p[1][0]} {p[0]} {p[2][0]})",
                   lambda row, p=p: (p[1][1](row) and p[2][1](row)) if p[0] == "and" else (p[1][1](row) or p[2][1](row))))
    negated = children.map(lambda c: (f"(not {c[0]})", lambda row, c=c: not c[1](row)))
    return st.one_of(both, negated)


boolean = st.recursive(_boolean_leaves(), _boolean, max_leaves=5)

rows = st.lists(st.tuples(st.one_of(st.none(), st.floats(-100, 100), st.sampled_from([0.0, 1e300, -1e300])),
                          st.integers(-3, 3), st.one_of(st.none(), st.sampled_from(WORDS)), st.booleans()),
                min_size=1, max_size=12)


def _frame(data) -> pd.DataFrame:
    return pd.DataFrame({"a": pd.Series([np.nan if r[0] is None else r[0] for r in data], dtype=float),
                         "b": pd.Series([r[1] for r in data], dtype="int64"),
                         "t": pd.Series([r[2] for r in data], dtype=object),
                         "f": pd.Series([r[3] for r in data], dtype=bool)})


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{"a": None if math.isnan(a) else float(a), "b": float(b), "t": t, "f": bool(f)}
            for a, b, t, f in frame.itertuples(index=False)]


@given(expression=numeric, data=rows)
def test_numeric_expressions_match_the_per_row_reference(expression, data):
    formula, reference = expression
    frame = _frame(data)
    parsed = parse_expression(formula, KINDS, "test")
    assert parsed.kind == "numeric"
    got = parsed.evaluate(frame)
    expected = [reference(row) for row in _records(frame)]
    assert [None if math.isnan(v) else v for v in got] == expected, formula


@given(expression=boolean, data=rows)
def test_boolean_expressions_match_the_per_row_reference(expression, data):
    formula, reference = expression
    frame = _frame(data)
    parsed = parse_expression(formula, KINDS, "test")
    assert parsed.kind == "boolean"
    assert parsed.evaluate(frame).tolist() == [bool(reference(row)) for row in _records(frame)], formula


@given(expression=text, data=rows)
def test_text_expressions_match_the_per_row_reference(expression, data):
    formula, reference = expression
    frame = _frame(data)
    assert parse_expression(formula, KINDS, "test").evaluate(frame).tolist() == [reference(r) for r in _records(frame)]


@given(expression=boolean, data=rows, split=st.integers(0, 12))
def test_a_rows_value_does_not_depend_on_other_rows(expression, data, split):
    parsed = parse_expression(expression[0], KINDS, "test")
    frame = _frame(data)
    whole = parsed.evaluate(frame).tolist()
    assert parsed.evaluate(frame.iloc[:split]).tolist() + parsed.evaluate(frame.iloc[split:]).tolist() == whole


TOKENS = ["a", "t", "f", "(", ")", "+", "*", "/", "-", "<", "==", "in", "not", "and", "or", "'x'", "3", "1.5",
          ",", "abs", "is_null", "lower", "col", "__import__", ".", "[", "]", "lambda", ":", "**", "None", "if"]


@given(st.one_of(st.text(max_size=40), st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join)))
def test_any_text_parses_or_is_refused_with_one_line(formula):
    try:
        parsed = parse_expression(formula, KINDS, "where")
    except ExpressionError as refused:
        assert "\n" not in str(refused)
    else:
        assert parsed.kind in ("numeric", "boolean", "text")
        assert {name for name, _ in parsed.columns} <= set(KINDS)


@pytest.mark.parametrize("formula, message", [
    ("__import__('os')", "call of __import__ is not allowed"),
    ("a if f else b", "ifexp is not allowed"),
    ("a ** 2", "operator Pow is not allowed"),
    ("[a for a in t]", "listcomp is not allowed"),
    ("t[0]", "subscript is not allowed"),
    ("a == None", "use is_null"),
    ("t in (1, 2)", "is compared with"),
    ("a in t", "needs a non-empty tuple of literals"),
    ("col(t)", r"col\(\) takes a column name in quotes"),
    ("a +", "does not parse"),
    ("", "must be non-empty text"),
    ("a" * 3000, "keep it under"),
])
def test_refused_formulas_say_why(formula, message):
    with pytest.raises(ExpressionError, match=message):
        parse_expression(formula, KINDS, "where")


# key sets and group codes ----------------------------------------------------------------------------------------

values = st.lists(st.sampled_from(["p", "q", "r", "s"]), min_size=1, max_size=5)


@given(first=values, second=st.lists(st.integers(0, 4), min_size=1, max_size=4))
def test_key_set_products_are_every_pair_in_order(first, second):
    left, right = KeySet.from_dict({"x": first}), KeySet.from_dict({"n": second})
    product = left * right
    assert product.rows == tuple(itertools.product(dict.fromkeys(first), dict.fromkeys(second)))
    assert product == KeySet.from_dict({"x": first, "n": second})
    assert KeySet.from_frame(product.to_frame()) == product
    with pytest.raises(PrivacyParameterError, match="both key sets"):
        product * left


frames = st.lists(st.tuples(st.one_of(st.none(), st.sampled_from(["p", "q", "r"])), st.sampled_from([1, 2, 3]),
                            st.sampled_from(["u1", "u2", "u3", "u4"])), min_size=1, max_size=30)


@given(data=frames, keys=st.lists(st.tuples(st.sampled_from(["p", "q", "r", "s"]), st.sampled_from([1, 2, 9])),
                                  min_size=1, max_size=6, unique=True))
def test_group_codes_of_several_columns_match_a_dictionary_lookup(data, keys):
    frame = pd.DataFrame(data, columns=["x", "n", "person_id"])
    start = QueryPlan.start(columns={"x": "text", "n": "numeric", "person_id": "text"}, privacy_unit="person_id",
                            epsilon=1.0, delta=1e-6)
    plan = start.group_by(["x", "n"], keys=KeySet(["x", "n"], keys)).count()
    groups = _public_groups(frame, plan)
    lookup = {key: index for index, key in enumerate(plan.keys.rows)}
    raw = np.asarray(groups.raw, dtype=np.int64)          # negative raw codes are rows not counted
    assert np.where(raw >= 0, groups.table[raw], -1).tolist() == [lookup.get((x, n), -1) for x, n, _ in data]
    selected, labels = _selected_codes(frame, start.group_by(["x", "n"]).count())
    present = sorted({(x, n) for x, n, _ in data if x is not None})
    assert labels == present
    assert selected.tolist() == [present.index((x, n)) if x is not None else -1 for x, n, _ in data]

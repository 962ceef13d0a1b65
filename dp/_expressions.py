"""Row expressions for ``where`` filters and derived columns: parsed, type-checked, evaluated row by row.

An expression is a Python-like formula over one row's columns, for example
``amount - discount``, ``category in ('books', 'music') and amount >= 10`` or
``fill_null(region, 'unknown')``. The grammar has column names (or ``col('a name')``),
literals (numbers, 'text', True, False, None), ``+ - * /``, comparisons (chained ones too),
``in`` / ``not in`` a tuple or list of literals, ``and``, ``or``, ``not``, and the functions
``abs(x)``, ``is_null(x)``, ``fill_null(x, literal)`` and ``lower(text)``. Nothing else parses:
no attribute access, no calls of anything else, no aggregates.

Privacy: every operation is elementwise, so a row's value depends only on that row. A filter or
derived column therefore never lets one person's rows change another person's, and bounding
after it still sees (and bounds) a whole person.

Values: numbers are float64 with NaN for missing; text is str or None; booleans are never
missing (a missing boolean reads as False). Arithmetic that divides by zero or overflows is
missing; a comparison with a missing value is False.
"""

from __future__ import annotations

import ast
import math
import numbers
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from profiling.errors import PortraitError

__all__ = ["BOOL", "NUMERIC", "TEMPORAL", "TEXT", "Expression", "ExpressionError", "parse_expression"]

NUMERIC, BOOL, TEXT, TEMPORAL, OTHER = "numeric", "boolean", "text", "date/time", "other"
NULL = "null"                     # the kind of the literal None, which fits any kind
_MAX_LENGTH = 2_000
_ARITHMETIC = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_ORDER = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_EQUALITY = {ast.Eq: "==", ast.NotEq: "!="}
_FUNCTIONS = ("abs", "col", "fill_null", "is_null", "lower")


class ExpressionError(PortraitError):
    """A row expression does not parse, names an unknown column or mixes kinds."""


@dataclass(frozen=True)
class Expression:
    """A checked row expression: its text, result kind and the columns it reads."""

    text: str
    kind: str
    columns: tuple[tuple[str, str], ...]      # (column, kind) of each column read
    _tree: ast.expr

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        """One value per row of ``frame`` (float64 with NaN, object with None, or bool)."""
        return _Evaluator(frame, dict(self.columns)).visit(self._tree)


def parse_expression(text: object, kinds: Mapping[str, str], where: str) -> Expression:
    """Parse and type-check ``text`` against columns of the given ``kinds``; raises ``ExpressionError``.

    >>> parse_expression("amount * 2 > 10", {"amount": "numeric"}, "a filter").kind
    'boolean'
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"{where}: the expression must be non-empty text, got {text!r}")
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"{where}: the expression is {len(text):,} characters long; keep it under "
                              f"{_MAX_LENGTH:,}")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise ExpressionError(f"{where}: {text!r} does not parse ({error.msg}); write e.g. \"amount > 10 and "
                              f"category == 'books'\"") from None
    except (ValueError, MemoryError, RecursionError):
        raise ExpressionError(f"{where}: {text!r} does not parse; simplify it") from None
    checker = _Checker(kinds, where, text)
    try:
        kind = checker.visit(tree)
    except RecursionError:
        raise ExpressionError(f"{where}: {text!r} is nested too deeply; simplify it") from None
    read = tuple(sorted((name, kinds[name]) for name in checker.columns))
    return Expression(text.strip(), BOOL if kind == NULL else kind, read, tree)


def _literal(node: ast.expr) -> object:
    """The value of a literal node (a number, text, True, False, None, or a negated number)."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float, str))):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float))
            and not isinstance(node.operand.value, bool)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    raise LookupError


def _literal_kind(value: object) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, numbers.Real):
        return NUMERIC
    return TEXT


class _Checker(ast.NodeVisitor):
    """Returns each node's kind; refuses anything outside the grammar with the construct named."""

    def __init__(self, kinds: Mapping[str, str], where: str, text: str) -> None:
        self.kinds, self.where, self.text = kinds, where, text
        self.columns: set[str] = set()

    def fail(self, message: str) -> ExpressionError:
        return ExpressionError(f"{self.where}: {message} in {self.text!r}")

    def generic_visit(self, node: ast.AST) -> str:
        raise self.fail(f"{type(node).__name__.lower()} is not allowed (only columns, literals, + - * /, "
                        f"comparisons, in, and/or/not and {', '.join(_FUNCTIONS)})")

    def column(self, name: str) -> str:
        if name not in self.kinds:
            raise self.fail(f"no column {name!r}; columns are {', '.join(map(str, self.kinds))}")
        self.columns.add(name)
        return self.kinds[name]

    def visit_Name(self, node: ast.Name) -> str:
        return self.column(node.id)

    def visit_Constant(self, node: ast.Constant) -> str:
        try:
            value = _literal(node)
        except LookupError:
            raise self.fail(f"literal {node.value!r} is not a number, text, True, False or None") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(f"literal {value!r} is not finite")
        return _literal_kind(value)

    def expect(self, node: ast.expr, *kinds: str, what: str) -> str:
        kind = self.visit(node)
        if kind not in (*kinds, NULL):
            raise self.fail(f"{what} needs {' or '.join(kinds)} values, got {kind} ({ast.unparse(node)})")
        return kind

    def visit_BinOp(self, node: ast.BinOp) -> str:
        if type(node.op) not in _ARITHMETIC:
            raise self.fail(f"operator {type(node.op).__name__} is not allowed; use + - * /")
        self.expect(node.left, NUMERIC, what=f"'{_ARITHMETIC[type(node.op)]}'")
        self.expect(node.right, NUMERIC, what=f"'{_ARITHMETIC[type(node.op)]}'")
        return NUMERIC

    def visit_UnaryOp(self, node: ast.UnaryOp) -> str:
        if isinstance(node.op, ast.Not):
            self.expect(node.operand, BOOL, what="'not'")
            return BOOL
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            self.expect(node.operand, NUMERIC, what="a sign")
            return NUMERIC
        raise self.fail("operator ~ is not allowed")

    def visit_BoolOp(self, node: ast.BoolOp) -> str:
        for value in node.values:
            self.expect(value, BOOL, what="'and'/'or'")
        return BOOL

    def visit_Compare(self, node: ast.Compare) -> str:
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                self.membership(left, right)
            elif type(op) in _ORDER:
                kind = self.expect(left, NUMERIC, TEXT, what=f"'{_ORDER[type(op)]}'")
                other = self.expect(right, NUMERIC, TEXT, what=f"'{_ORDER[type(op)]}'")
                self.same(kind, other, left, right)
            elif type(op) in _EQUALITY:
                self.same(self.visit(left), self.visit(right), left, right)
            else:
                raise self.fail("'is' is not allowed; use == or is_null(x)")
            left = right
        return BOOL

    def same(self, kind: str, other: str, left: ast.expr, right: ast.expr) -> None:
        if NULL in (kind, other):
            raise self.fail("comparing with None is always false; use is_null(x)")
        if kind != other:
            raise self.fail(f"{ast.unparse(left)} ({kind}) is compared with {ast.unparse(right)} ({other})")

    def membership(self, left: ast.expr, right: ast.expr) -> None:
        kind = self.visit(left)
        if not isinstance(right, (ast.Tuple, ast.List, ast.Set)) or not right.elts:
            raise self.fail("'in' needs a non-empty tuple of literals, e.g. x in ('a', 'b')")
        for element in right.elts:
            try:
                value = _literal(element)
            except LookupError:
                raise self.fail(f"{ast.unparse(element)} in an 'in' list is not a literal") from None
            self.same(kind, _literal_kind(value), left, element)

    def visit_Call(self, node: ast.Call) -> str:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in _FUNCTIONS or node.keywords:
            raise self.fail(f"call of {ast.unparse(node.func)} is not allowed; the functions are "
                            f"{', '.join(_FUNCTIONS)}")
        arity = {"abs": 1, "col": 1, "fill_null": 2, "is_null": 1, "lower": 1}[name]
        if len(node.args) != arity:
            raise self.fail(f"{name} takes {arity} argument(s), got {len(node.args)}")
        if name == "col":
            argument = node.args[0]
            if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)):
                raise self.fail("col() takes a column name in quotes, e.g. col('unit price')")
            return self.column(argument.value)
        if name == "abs":
            self.expect(node.args[0], NUMERIC, what="abs")
            return NUMERIC
        if name == "lower":
            self.expect(node.args[0], TEXT, what="lower")
            return TEXT
        if name == "is_null":
            self.visit(node.args[0])
            return BOOL
        kind = self.visit(node.args[0])
        try:
            value = _literal(node.args[1])
        except LookupError:
            raise self.fail("fill_null's second argument must be a literal") from None
        self.same(kind, _literal_kind(value), node.args[0], node.args[1])
        return kind


class _Evaluator(ast.NodeVisitor):
    """Vectorized evaluation of a checked tree; every step is elementwise over the rows."""

    def __init__(self, frame: pd.DataFrame, kinds: Mapping[str, str]) -> None:
        self.frame, self.kinds, self.n = frame, kinds, len(frame)
        self.read: dict[str, np.ndarray] = {}

    def column(self, name: str) -> np.ndarray:
        if name not in self.read:
            self.read[name] = self.convert(name)
        return self.read[name]

    def convert(self, name: str) -> np.ndarray:
        series, kind = self.frame[name], self.kinds[name]
        if kind == BOOL:
            if series.dtype == bool:
                return series.to_numpy()
            return series.astype(object).fillna(False).to_numpy(dtype=bool)
        if kind == NUMERIC:
            return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        values = series.astype(object)
        return values.where(values.notna(), None).to_numpy(dtype=object)

    def constant(self, value: object) -> np.ndarray:
        if value is None:
            return np.full(self.n, None, dtype=object)
        if isinstance(value, bool):
            return np.full(self.n, value, dtype=bool)
        if isinstance(value, numbers.Real):
            return np.full(self.n, float(value), dtype=np.float64)
        return np.full(self.n, value, dtype=object)

    def visit_Name(self, node: ast.Name) -> np.ndarray:
        return self.column(node.id)

    def visit_Constant(self, node: ast.Constant) -> np.ndarray:
        return self.constant(node.value)

    def numbers(self, node: ast.expr) -> np.ndarray:
        values = self.visit(node)
        return values if values.dtype == np.float64 else np.full(self.n, np.nan)   # None literal

    def visit_BinOp(self, node: ast.BinOp) -> np.ndarray:
        left, right = self.numbers(node.left), self.numbers(node.right)
        with np.errstate(all="ignore"):
            result = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                      ast.Div: np.divide}[type(node.op)](left, right)
        return np.where(np.isfinite(result), result, np.nan)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> np.ndarray:
        if isinstance(node.op, ast.Not):
            return ~self.truth(node.operand)
        values = self.numbers(node.operand)
        return -values if isinstance(node.op, ast.USub) else values

    def truth(self, node: ast.expr) -> np.ndarray:
        values = self.visit(node)
        return values if values.dtype == bool else np.zeros(self.n, dtype=bool)   # None literal

    def visit_BoolOp(self, node: ast.BoolOp) -> np.ndarray:
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        result = self.truth(node.values[0])
        for value in node.values[1:]:
            result = combine(result, self.truth(value))
        return result

    def visit_Compare(self, node: ast.Compare) -> np.ndarray:
        result = np.ones(self.n, dtype=bool)
        left = self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                choices = {_literal(e) for e in right_node.elts}
                if left.dtype == object:
                    found = pd.Series(left, dtype=object).isin(list(choices)).to_numpy()
                else:
                    found = np.isin(left, np.array(sorted(choices), dtype=left.dtype))
                present = _present(left)
                result &= present & (found if isinstance(op, ast.In) else ~found)
                continue
            right = self.operand(right_node)
            result &= _compare(type(op), left, right)
            left = right if isinstance(right, np.ndarray) else self.visit(right_node)
        return result

    def operand(self, node: ast.expr) -> np.ndarray | object:
        """A literal as a scalar (compared without a column of copies), anything else evaluated."""
        try:
            value = _literal(node)
        except LookupError:
            return self.visit(node)
        return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value

    def visit_Call(self, node: ast.Call) -> np.ndarray:
        name, args = node.func.id, node.args
        if name == "col":
            return self.column(args[0].value)
        if name == "abs":
            return np.abs(self.numbers(args[0]))
        if name == "lower":
            return np.array([None if v is None else v.lower() for v in self.visit(args[0])], dtype=object)
        values = self.visit(args[0])
        if name == "is_null":
            return ~_present(values)
        filled = values.copy()
        filled[~_present(values)] = _literal(args[1])
        return filled


def _present(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float64:
        return ~np.isnan(values)
    if values.dtype == bool:
        return np.ones(len(values), dtype=bool)
    return ~pd.isna(values)


def _compare(op: type, left: np.ndarray, right: np.ndarray | object) -> np.ndarray:
    """``left op right`` row by row, False where either is missing; ``right`` may be a (present) scalar."""
    scalar = not isinstance(right, np.ndarray)
    both = _present(left) if scalar else _present(left) & _present(right)
    function = {ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
                ast.Gt: np.greater, ast.GtE: np.greater_equal}[op]
    if left.dtype == object or (not scalar and right.dtype == object):
        # only where both are present: text ordering against None is undefined
        result = np.zeros(len(both), dtype=bool)
        result[both] = function(left[both], right if scalar else right[both]).astype(bool)
        return result
    with np.errstate(invalid="ignore"):
        return both & function(left, right)

"""Row filter expressions (``lang != 'en' and len(text) < 10``) compiled to Arrow compute expressions.

The grammar is a safe subset of Python expressions: column names, string/number/bool/None
literals, comparisons, ``and``/``or``/``not``, ``in``/``not in`` with a list, ``is None`` /
``is not None``, and the functions ``len(col)``, ``lower(col)``, ``startswith(col, s)``,
``endswith(col, s)`` and ``contains(col, s)``. Nothing is ever evaluated by Python itself.
"""

from __future__ import annotations

import ast
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from granary.errors import StoreError

_CMP = {
    ast.Eq: "equal",
    ast.NotEq: "not_equal",
    ast.Lt: "less",
    ast.LtE: "less_equal",
    ast.Gt: "greater",
    ast.GtE: "greater_equal",
}


class FilterError(StoreError, ValueError):
    """A filter expression is malformed or uses something not allowed."""


def compile_filter(text: str, columns: list[str] | None = None) -> pc.Expression:
    """Compile a filter expression; ``columns`` (if given) are the names it may refer to."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise FilterError(f"cannot parse filter {text!r}: {exc.msg} at column {exc.offset}",
                          hint="write e.g. \"lang != 'en' and len(text) < 10\"") from None
    return _Compiler(text, columns).expr(tree.body)


def matches(table: pa.Table, text: str) -> pa.ChunkedArray:
    """Boolean mask of the rows of ``table`` that match (nulls count as no match)."""
    import pyarrow.dataset as pads  # pulls in pandas glue (~0.5 s): only when a filter actually runs

    expr = compile_filter(text, table.column_names)
    mask = pads.dataset(table).to_table(columns={"m": expr}).column("m")
    return pc.fill_null(mask, False)


class _Compiler:
    def __init__(self, text: str, columns: list[str] | None) -> None:
        self.text = text
        self.columns = columns

    def fail(self, why: str) -> FilterError:
        return FilterError(f"filter {self.text!r}: {why}",
                           hint="allowed: columns, literals, comparisons, and/or/not, in [...], len/lower/"
                                "startswith/endswith/contains")

    def expr(self, node: ast.AST) -> Any:
        if isinstance(node, ast.BoolOp):
            parts = [self.expr(v) for v in node.values]
            out = parts[0]
            for p in parts[1:]:
                out = (out & p) if isinstance(node.op, ast.And) else (out | p)
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.expr(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            val = self.expr(node.operand)
            if isinstance(val, (int, float)):
                return -val
            raise self.fail("unary minus applies to numbers only")
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Name):
            if self.columns is not None and node.id not in self.columns:
                raise self.fail(f"unknown column {node.id!r} (columns: {', '.join(self.columns)})")
            return pc.field(node.id)
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float, bool))):
            return node.value
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(f"{type(node).__name__} is not allowed")

    def compare(self, node: ast.Compare) -> Any:
        out = None
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.Is, ast.IsNot)):
                if not (isinstance(right, ast.Constant) and right.value is None):
                    raise self.fail("'is' only works with None")
                part = self.expr(left).is_null()
                part = ~part if isinstance(op, ast.IsNot) else part
            elif isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
                    raise self.fail("'in' needs a literal list, e.g. lang in ['en', 'de']")
                values = [self.expr(e) for e in right.elts]
                part = self.expr(left).isin(values)
                part = ~part if isinstance(op, ast.NotIn) else part
            elif type(op) in _CMP:
                a, b = self.expr(left), self.expr(right)
                if not isinstance(a, pc.Expression) and not isinstance(b, pc.Expression):
                    raise self.fail("a comparison needs at least one column")
                part = getattr(pc, _CMP[type(op)])(a, b)
            else:
                raise self.fail(f"operator {type(op).__name__} is not allowed")
            out = part if out is None else out & part
            left = right
        return out

    def call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise self.fail("only plain calls of len, lower, startswith, endswith, contains are allowed")
        name, args = node.func.id, [self.expr(a) for a in node.args]
        if name == "len" and len(args) == 1:
            return pc.utf8_length(args[0])
        if name == "lower" and len(args) == 1:
            return pc.utf8_lower(args[0])
        if name in ("startswith", "endswith", "contains") and len(args) == 2 and isinstance(args[1], str):
            fn = {"startswith": pc.starts_with, "endswith": pc.ends_with, "contains": pc.match_substring}[name]
            return fn(args[0], pattern=args[1])
        raise self.fail(f"unknown function or wrong arguments: {name}({len(args)} args)")

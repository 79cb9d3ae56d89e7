"""Row filter expressions (``lang != 'en' and len(text) < 10``) compiled to Arrow compute expressions.

The grammar is a safe subset of Python expressions: column names, string/number/bool/None
literals, comparisons, ``and``/``or``/``not``, ``in``/``not in`` with a list, ``is None`` /
``is not None``, and the functions ``len(col)``, ``lower(col)``, ``startswith(col, s)``,
``endswith(col, s)`` and ``contains(col, s)``. Nothing is ever evaluated by Python itself: the
expression compiles to a tree of Arrow compute calls, each run on whole columns.

Expressions are bounded before they are compiled (``MAX_CHARS`` characters, ``MAX_NODES`` syntax nodes,
``MAX_DEPTH`` levels of nesting), so a hostile or generated filter gets a :class:`FilterError`, never a
``RecursionError`` or a crash. ``and``/``or`` chains are folded one term at a time, not handed to Arrow's
expression engine, whose simplifier recurses once per term (a 9,000-term ``or`` crashed the process).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
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


MAX_CHARS = 1_000_000
MAX_NODES = 100_000
MAX_DEPTH = 64
_HINT = "write e.g. \"lang != 'en' and len(text) < 10\""


class FilterError(StoreError, ValueError):
    """A filter expression is malformed or uses something not allowed."""


def _short(text: str) -> str:
    return repr(text) if len(text) <= 120 else f"{text[:100]!r}... ({len(text):,} characters)"


def parse_filter(text: str) -> ast.expr:
    """Parse and bound a filter expression (length, node count, nesting depth); returns the expression node."""
    if not isinstance(text, str):
        raise FilterError(f"a filter must be a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise FilterError(f"filter {_short(text)} is too long ({len(text):,} characters, at most {MAX_CHARS:,})",
                          hint="match many values with `col in [...]`, or split the work into several filters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise FilterError(f"cannot parse filter {_short(text)}: {exc.msg} at column {exc.offset}",
                          hint=_HINT) from None
    except (RecursionError, MemoryError):  # the parser's own stack guard on absurd nesting
        raise FilterError(f"filter {_short(text)} is nested too deeply to parse (at most {MAX_DEPTH} levels)",
                          hint="flatten it: `a or b or c` instead of `a or (b or (c))`") from None
    _check_shape(text, tree.body)
    return tree.body


def _check_shape(text: str, root: ast.AST) -> None:
    """Count nodes and measure nesting without recursion (a deep tree must not overflow the stack)."""
    nodes, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise FilterError(f"filter {_short(text)} is nested more than {MAX_DEPTH} levels deep",
                              hint="flatten it: `a or b or c` instead of `a or (b or (c))`, `not a` once")
        if nodes > MAX_NODES:
            raise FilterError(f"filter {_short(text)} has more than {MAX_NODES:,} parts",
                              hint="match many values with `col in [...]`, or split the work into several filters")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node)
                     if not isinstance(child, (ast.expr_context, ast.boolop, ast.cmpop, ast.unaryop)))


@dataclass(frozen=True)
class CompiledFilter:
    """A checked filter: ``mask(table)`` runs it on whole columns with Arrow compute."""

    text: str
    run: Callable[[pa.Table], Any]

    def mask(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        """Boolean mask of the rows that match (nulls count as no match).

        Raises:
            FilterError: the expression does not fit the columns' types.
        """
        try:
            out = self.run(table)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FilterError(f"filter {_short(self.text)} does not fit the columns' types: {first}",
                              hint="compare strings with strings and numbers with numbers; columns: "
                                   + ", ".join(f"{f.name} ({f.type})" for f in table.schema)) from None
        if not pa.types.is_boolean(out.type):
            raise FilterError(f"filter {_short(self.text)} gives {out.type} values, not true/false",
                              hint="compare it with something, e.g. `len(text) > 0`")
        return pc.fill_null(out, False)


def compile_filter(text: str, columns: list[str] | None = None) -> CompiledFilter:
    """Compile a filter expression; ``columns`` (if given) are the names it may refer to.

    Raises:
        FilterError: the expression is malformed, too large, too deep, or not a condition on columns.
    """
    body = parse_filter(text)
    node = _Compiler(text, columns).expr(body)
    if isinstance(node, _Literal):
        raise FilterError(f"filter {_short(text)} is a constant, not a condition on columns", hint=_HINT)
    return CompiledFilter(text, node)


def check_filter(text: str, schema: pa.Schema | None) -> CompiledFilter:
    """Validate ``text`` before any data is read: syntax and bounds, and with a schema also the column names
    and the types (it is run on an empty table of that schema)."""
    if schema is None:
        return compile_filter(text)
    compiled = compile_filter(text, schema.names)
    compiled.mask(schema.empty_table())
    return compiled


def matches(table: pa.Table, text: str) -> pa.ChunkedArray | pa.Array:
    """Boolean mask of the rows of ``table`` that match (nulls count as no match)."""
    return compile_filter(text, table.column_names).mask(table)


@dataclass(frozen=True)
class _Literal:
    value: Any


_Node = Callable[[pa.Table], Any] | _Literal


def _fold(parts: list[Callable[[pa.Table], Any]], op: Callable[[Any, Any], Any]) -> Callable[[pa.Table], Any]:
    def run(table: pa.Table) -> Any:
        out = parts[0](table)
        for part in parts[1:]:
            out = op(out, part(table))
        return out

    return run


def _value(node: _Node, table: pa.Table) -> Any:
    return node.value if isinstance(node, _Literal) else node(table)


class _Compiler:
    def __init__(self, text: str, columns: list[str] | None) -> None:
        self.text = text
        self.columns = columns

    def fail(self, why: str) -> FilterError:
        return FilterError(f"filter {_short(self.text)}: {why}",
                           hint="allowed: columns, literals, comparisons, and/or/not, in [...], len/lower/"
                                "startswith/endswith/contains")

    def expr(self, node: ast.AST) -> _Node:
        if isinstance(node, ast.BoolOp):
            word = "and" if isinstance(node.op, ast.And) else "or"
            parts = [self.condition(v, f"'{word}'") for v in node.values]
            return _fold(parts, pc.and_kleene if word == "and" else pc.or_kleene)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.condition(node.operand, "'not'")
            return lambda t: pc.invert(inner(t))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            val = self.expr(node.operand)
            if isinstance(val, _Literal) and isinstance(val.value, (int, float)) and not isinstance(val.value, bool):
                return _Literal(-val.value)
            raise self.fail("unary minus applies to numbers only")
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Name):
            if self.columns is not None and node.id not in self.columns:
                raise self.fail(f"unknown column {node.id!r} (columns: {', '.join(self.columns)})")
            name = node.id
            return lambda t: _column(t, name)
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float, bool))):
            return _Literal(node.value)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(f"{type(node).__name__} is not allowed")

    def condition(self, node: ast.AST, where: str) -> Callable[[pa.Table], Any]:
        """A sub-expression that must be a condition on columns (not a bare literal)."""
        out = self.expr(node)
        if isinstance(out, _Literal):
            raise self.fail(f"{where} needs conditions on columns, got the literal {out.value!r}")
        return out

    def column(self, node: ast.AST, what: str) -> Callable[[pa.Table], Any]:
        """An operand that must be a column (or a function of one)."""
        out = self.expr(node)
        if isinstance(out, _Literal):
            raise self.fail(f"{what} takes a column, got the literal {out.value!r}")
        return out

    def compare(self, node: ast.Compare) -> Callable[[pa.Table], Any]:
        parts: list[Callable[[pa.Table], Any]] = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.Is, ast.IsNot)):
                if not (isinstance(right, ast.Constant) and right.value is None):
                    raise self.fail("'is' only works with None")
                subject = self.column(left, "'is None'")
                fn = pc.is_valid if isinstance(op, ast.IsNot) else pc.is_null
                parts.append(lambda t, s=subject, f=fn: f(s(t)))  # type: ignore[misc]
            elif isinstance(op, (ast.In, ast.NotIn)):
                parts.append(self.membership(left, right, negate=isinstance(op, ast.NotIn)))
            elif type(op) in _CMP:
                a, b = self.expr(left), self.expr(right)
                if isinstance(a, _Literal) and isinstance(b, _Literal):
                    raise self.fail("a comparison needs at least one column")
                fn = getattr(pc, _CMP[type(op)])
                parts.append(lambda t, a=a, b=b, f=fn: f(_value(a, t), _value(b, t)))  # type: ignore[misc]
            else:
                raise self.fail(f"operator {type(op).__name__} is not allowed")
            left = right
        return parts[0] if len(parts) == 1 else _fold(parts, pc.and_kleene)

    def membership(self, left: ast.AST, right: ast.AST, *, negate: bool) -> Callable[[pa.Table], Any]:
        if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
            raise self.fail("'in' needs a literal list, e.g. lang in ['en', 'de']")
        values = [self.expr(e) for e in right.elts]
        if not all(isinstance(v, _Literal) for v in values):
            raise self.fail("the list after 'in' may hold literals only")
        try:
            value_set = pa.array([v.value for v in values])  # type: ignore[union-attr]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise self.fail(f"the list after 'in' mixes types: {exc}") from None
        subject = self.column(left, "'in'")

        def run(t: pa.Table) -> Any:
            found = pc.is_in(subject(t), value_set=value_set)
            return pc.invert(found) if negate else found

        return run

    def call(self, node: ast.Call) -> Callable[[pa.Table], Any]:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise self.fail("only plain calls of len, lower, startswith, endswith, contains are allowed")
        name, args = node.func.id, node.args
        if name in ("len", "lower") and len(args) == 1:
            arg = self.column(args[0], f"{name}()")
            fn = pc.utf8_length if name == "len" else pc.utf8_lower
            return lambda t: fn(arg(t))
        if name in ("startswith", "endswith", "contains") and len(args) == 2:
            pattern = self.expr(args[1])
            if not (isinstance(pattern, _Literal) and isinstance(pattern.value, str)):
                raise self.fail(f"{name}() takes a string literal as its second argument")
            arg = self.column(args[0], f"{name}()")
            fn = {"startswith": pc.starts_with, "endswith": pc.ends_with, "contains": pc.match_substring}[name]
            return lambda t: fn(arg(t), pattern=pattern.value)
        raise self.fail(f"unknown function or wrong arguments: {name}({len(args)} args)")


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise FilterError(f"unknown column {name!r} (columns: {', '.join(table.column_names)})")
    return table.column(name)

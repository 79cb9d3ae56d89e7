"""The DuckDB session a tabular pipeline runs in: views over Arrow tables, quarantine, fitted state, report."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from granary.errors import MissingDependencyError

QUARANTINE_SCHEMA = pa.schema([("step", pa.string()), ("rule", pa.string()), ("reason", pa.string()),
                               ("row", pa.string())])
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(name: str) -> str:
    """A DuckDB identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: Any) -> str:
    """A SQL literal for a Python scalar (numbers and strings; None is NULL)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number(value)
    return "'" + str(value).replace("'", "''") + "'"


def number(value: float) -> str:
    """A DOUBLE literal that reads back as exactly ``value``, NaN and infinities included.

    A bare ``1.5`` is typed DECIMAL by DuckDB, which turns an integer column it meets into DECIMAL (and
    overflows on large values), and ``repr`` of NaN or infinity is no SQL at all; a quoted string cast to
    DOUBLE is parsed exactly.
    """
    v = float(value)
    text = "NaN" if v != v else ("Infinity" if v == math.inf else "-Infinity" if v == -math.inf else repr(v))
    return f"CAST('{text}' AS DOUBLE)"


def connect(threads: int | None = None) -> Any:
    """An in-memory DuckDB connection (extra ``tabular``)."""
    try:
        import duckdb
    except ImportError as exc:
        raise MissingDependencyError("duckdb", "tabular") from exc
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("SET preserve_insertion_order = true")
    return con


@dataclass
class TabularContext:
    """State shared by the steps of one run.

    Every step reads a view name and returns a new one; nothing is materialised until a step needs
    statistics or the run ends, so DuckDB runs consecutive steps as one pipelined query over the Arrow
    input (registered without a copy).
    """

    con: Any
    fitted: dict[str, Any] = field(default_factory=dict)
    report: dict[str, dict[str, Any]] = field(default_factory=dict)
    quarantine: list[pa.Table] = field(default_factory=list)
    deferred: list[tuple[str, str, str]] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=itertools.count)

    def register(self, table: pa.Table | pa.RecordBatchReader, name: str | None = None) -> str:
        """Expose an Arrow table to SQL (zero copy); returns its view name."""
        name = name or f"_in{next(self._ids)}"
        self.con.register(name, table)
        return name

    def view(self, sql: str) -> str:
        """Define the next view (lazy)."""
        name = f"_v{next(self._ids)}"
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")
        return name

    def materialize(self, sql: str) -> str:
        """Compute ``sql`` once into a temporary table (for results read more than once)."""
        name = f"_t{next(self._ids)}"
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
        return name

    def columns(self, rel: str) -> dict[str, str]:
        """Column name -> DuckDB type of a view."""
        return {row[0]: row[1] for row in self.con.execute(f"DESCRIBE {rel}").fetchall()}

    def one(self, sql: str) -> tuple[Any, ...]:
        """The single row of an aggregate query."""
        rows = self.con.execute(sql).fetchall()  # fetchall: a half-read result would block the next query
        assert len(rows) == 1, sql
        return tuple(rows[0])

    def arrow(self, sql: str) -> pa.Table:
        """Run a query into an Arrow table."""
        rel = self.con.sql(sql)
        if hasattr(rel, "to_arrow_table"):  # duckdb >= 1.4
            return rel.to_arrow_table()
        return rel.arrow()

    def count(self, rel: str) -> int:
        return int(self.one(f"SELECT count(*) FROM {rel}")[0])

    def add_rows(self, step: str, rel: str, where: str, rule_col: str, reason_col: str) -> int:
        """Copy the rows of ``rel`` matching ``where`` to the quarantine (as JSON text, with their rule and
        reason taken from two of its columns, which are left out of the row); returns how many."""
        data_cols = [c for c in self.columns(rel) if c not in (rule_col, reason_col)]
        row = "{" + ", ".join(f"{literal(c)}: {quote(c)}" for c in data_cols) + "}"
        table = self.arrow(f"SELECT {literal(step)} AS step, {rule_col} AS rule, {reason_col} AS reason, "
                           f"CAST(to_json({row}) AS VARCHAR) AS row FROM {rel} WHERE {where}")
        if table.num_rows:
            self.quarantine.append(table.cast(QUARANTINE_SCHEMA))
        return table.num_rows

    def count_later(self, step: str, key: str, rel: str) -> None:
        """Report ``count(*)`` of ``rel`` as ``key`` once the run ends (free when ``rel`` is the output)."""
        self.deferred.append((step, key, rel))

    def settle(self, final_rel: str, final_rows: int) -> None:
        """Compute the deferred counts."""
        for step, key, rel in self.deferred:
            self.note(step, **{key: final_rows if rel == final_rel else self.count(rel)})
        self.deferred = []

    def note(self, step: str, **facts: Any) -> None:
        """Add facts to a step's report section."""
        self.report.setdefault(step, {}).update(facts)


def check_column(name: str, columns: dict[str, str], where: str) -> None:
    """Raise a clear error for a column the data does not have."""
    if name not in columns:
        from granary.curate.errors import PipelineSpecError

        raise PipelineSpecError(where, f"no column {name!r} (columns: {sorted(columns)})")

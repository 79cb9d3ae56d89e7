"""Validation rules (types, ranges, patterns, sets, uniqueness, cross-field, references, freshness) and casts.

Failing rows go to the quarantine with every rule they broke; no valid row is touched. Rules are
compiled into one SQL pass (a CASE per rule), so validating costs about one scan whatever their number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from granary.curate.errors import PipelineSpecError
from granary.curate.tabular.base import TabularStep, register
from granary.curate.tabular.context import TabularContext, check_column, literal, number, quote
from granary.errors import CurateError

RuleKind = Literal["type", "not_null", "range", "regex", "allowed", "unique", "expr", "ref", "freshness"]
RULE_KINDS: tuple[str, ...] = ("type", "not_null", "range", "regex", "allowed", "unique", "expr", "ref", "freshness")


@dataclass(kw_only=True, frozen=True)
class Rule:
    """One validation rule.

    Attributes:
        rule: the kind of check (see ``RULE_KINDS``).
        column: the checked column (every kind but ``expr``).
        name: the label recorded with quarantined rows (default ``<rule>:<column>``).
        type: ``type``: the DuckDB type values must parse as (``BIGINT``, ``DOUBLE``, ``DATE``...).
        min: ``range``: smallest allowed value.
        max: ``range``: largest allowed value.
        pattern: ``regex``: a regular expression the whole value must match.
        values: ``allowed``: the allowed values.
        expr: ``expr``: a SQL condition every row must satisfy (cross-field rules: ``start <= end``).
        ref: ``ref``: the view (a version loaded by the runner) whose ``ref_column`` must hold the value.
        ref_column: ``ref``: the referenced column (default: ``column``).
        max_age_s: ``freshness``: how old a timestamp (or epoch seconds) may be.
    """

    rule: RuleKind
    column: str | None = None
    name: str | None = None
    type: str | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    values: tuple[Any, ...] = ()
    expr: str | None = None
    ref: str | None = None
    ref_column: str | None = None
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULE_KINDS:
            raise ValueError(f"rule must be one of {RULE_KINDS}, got {self.rule!r}")
        need = {"type": "type", "regex": "pattern", "allowed": "values", "expr": "expr", "ref": "ref",
                "freshness": "max_age_s"}.get(self.rule)
        if need and not getattr(self, need):
            raise ValueError(f"a {self.rule} rule needs `{need}`")
        if self.rule != "expr" and not self.column:
            raise ValueError(f"a {self.rule} rule needs `column`")
        if self.rule == "range" and self.min is None and self.max is None:
            raise ValueError("a range rule needs `min`, `max` or both")

    @property
    def label(self) -> str:
        return self.name or (f"{self.rule}:{self.column}" if self.column else f"expr:{self.expr}")

    def violation(self, columns: dict[str, str], where: str) -> tuple[str, str]:
        """SQL that is TRUE on a violating row, and the reason text recorded with it."""
        c = quote(self.column) if self.column else ""
        if self.column:
            check_column(self.column, columns, where)
        if self.rule == "type":
            return f"({c} IS NOT NULL AND TRY_CAST({c} AS {self.type}) IS NULL)", f"{self.column} is not a {self.type}"
        if self.rule == "not_null":
            return f"({c} IS NULL)", f"{self.column} is missing"
        if self.rule == "range":
            parts = ([f"{c} < {literal(self.min)}"] if self.min is not None else []) + \
                    ([f"{c} > {literal(self.max)}"] if self.max is not None else [])
            return f"coalesce({' OR '.join(parts)}, FALSE)", f"{self.column} outside [{self.min}, {self.max}]"
        if self.rule == "regex":
            return (f"coalesce(NOT regexp_full_match(CAST({c} AS VARCHAR), {literal(self.pattern)}), FALSE)",
                    f"{self.column} does not match {self.pattern}")
        if self.rule == "allowed":
            values = ", ".join(literal(v) for v in self.values)
            return f"coalesce({c} NOT IN ({values}), FALSE)", f"{self.column} not in the allowed set"
        if self.rule == "unique":
            return f"(count(*) OVER (PARTITION BY {c}) > 1 AND {c} IS NOT NULL)", f"{self.column} repeats"
        if self.rule == "expr":
            return f"coalesce(NOT ({self.expr}), FALSE)", f"fails {self.expr}"
        if self.rule == "ref":
            rc = quote(self.ref_column or self.column or "")
            ref = quote(self.ref or "")
            return (f"({c} IS NOT NULL AND {c} NOT IN (SELECT {rc} FROM {ref} WHERE {rc} IS NOT NULL))",
                    f"{self.column} not found in {self.ref}")
        # freshness: timestamps, or numbers taken as epoch seconds
        cutoff = time.time() - float(self.max_age_s or 0)
        typ = columns[self.column or ""].upper()
        value = c if any(t in typ for t in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL")) else f"epoch({c})"
        return f"coalesce({value} < {number(cutoff)}, TRUE)", f"{self.column} older than {self.max_age_s:g} s"


@register("validate")
@dataclass(kw_only=True, frozen=True)
class ValidateStep(TabularStep):
    """Check rules; rows breaking any go to the quarantine with the rules they broke.

    Attributes:
        rules: the rules.
        fail_above: fail the run when more than this fraction of rows is quarantined (None: never).
    """

    rules: tuple[Rule, ...] = ()
    fail_above: float | None = None

    @classmethod
    def convert_options(cls, options: dict[str, Any], where: str) -> dict[str, Any]:
        rules = []
        for i, r in enumerate(options.get("rules") or []):
            try:
                fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in r.items()}
                rules.append(Rule(**fields))
            except (TypeError, ValueError) as exc:
                raise PipelineSpecError(f"{where}.rules[{i}]", str(exc)) from exc
        return {**options, "rules": tuple(rules)}

    def __post_init__(self) -> None:
        if not self.rules:
            raise ValueError("validate needs at least one rule")

    def apply(self, ctx: TabularContext, rel: str) -> str:
        columns = ctx.columns(rel)
        checks = [r.violation(columns, f"{self.display}.{r.label}") for r in self.rules]
        rules_sql = "concat_ws(',', " + ", ".join(
            f"CASE WHEN {cond} THEN {literal(r.label)} END"
            for r, (cond, _) in zip(self.rules, checks, strict=True)) + ")"
        reasons_sql = "concat_ws('; ', " + ", ".join(
            f"CASE WHEN {cond} THEN {literal(why)} END" for cond, why in checks) + ")"
        flagged = ctx.materialize(f"SELECT *, {rules_sql} AS _rules, {reasons_sql} AS _reasons FROM {rel}")
        total = ctx.count(flagged)
        bad = ctx.add_rows(self.display, flagged, "_rules <> ''", "_rules", "_reasons")
        per_rule = {r.label: int(n) for r, n in zip(self.rules, ctx.one(
            "SELECT " + ", ".join(f"count_if(list_contains(string_split(_rules, ','), {literal(r.label)}))"
                                  for r in self.rules) + f" FROM {flagged}"), strict=True)}
        ctx.note(self.display, rows_in=total, rows_out=total - bad, quarantined=bad, violations=per_rule)
        if self.fail_above is not None and total and bad / total > self.fail_above:
            raise CurateError(f"step {self.display}: {bad} of {total} rows ({bad / total:.2%}) broke a rule, over "
                              f"the limit fail_above={self.fail_above}; by rule: {per_rule}",
                              hint="inspect the quarantine table of a run without fail_above, fix the source")
        return ctx.view(f"SELECT * EXCLUDE (_rules, _reasons) FROM {flagged} WHERE _rules = ''")


@register("cast")
@dataclass(kw_only=True, frozen=True)
class CastStep(TabularStep):
    """Cast columns to types; a value that does not parse sends its row to the quarantine.

    Attributes:
        types: column -> DuckDB type (``BIGINT``, ``DOUBLE``, ``DATE``, ``TIMESTAMP``, ``VARCHAR``...).
    """

    types: dict[str, str]

    def __post_init__(self) -> None:
        if not self.types:
            raise ValueError("cast needs `types: {column: TYPE}`")

    def apply(self, ctx: TabularContext, rel: str) -> str:
        columns = ctx.columns(rel)
        for col in self.types:
            check_column(col, columns, self.display)
        # blank text is a missing value, not a bad one
        value = {c: f"NULLIF(trim({quote(c)}), '')" if columns[c].upper() == "VARCHAR" else quote(c)
                 for c in self.types}
        conds = {c: f"({value[c]} IS NOT NULL AND TRY_CAST({value[c]} AS {t}) IS NULL)" for c, t in self.types.items()}
        rules = "concat_ws(',', " + ", ".join(f"CASE WHEN {q} THEN {literal('cast:' + c)} END"
                                              for c, q in conds.items()) + ")"
        reasons = "concat_ws('; ', " + ", ".join(
            f"CASE WHEN {q} THEN {literal(c + ' does not parse as ' + self.types[c] + ': ')} || "
            f"CAST({quote(c)} AS VARCHAR) END"
            for c, q in conds.items()) + ")"
        flagged = ctx.materialize(f"SELECT *, {rules} AS _rules, {reasons} AS _reasons FROM {rel}")
        bad = ctx.add_rows(self.display, flagged, "_rules <> ''", "_rules", "_reasons")
        ctx.note(self.display, quarantined=bad)
        replace = ", ".join(f"TRY_CAST({value[c]} AS {t}) AS {quote(c)}" for c, t in self.types.items())
        return ctx.view(f"SELECT * EXCLUDE (_rules, _reasons) REPLACE ({replace}) FROM {flagged} WHERE _rules = ''")

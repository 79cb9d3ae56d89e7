"""Tabular validation: planted violations of ten rule types are quarantined with their rule, valid rows never."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest

from granary.curate.errors import PipelineSpecError
from granary.curate.tabular import TabularPipeline, run_tabular
from granary.errors import CurateError

RULES = [
    {"rule": "type", "column": "qty", "type": "BIGINT", "name": "qty-int"},
    {"rule": "not_null", "column": "customer", "name": "customer-present"},
    {"rule": "range", "column": "age", "min": 0, "max": 120, "name": "age-range"},
    {"rule": "regex", "column": "email", "pattern": "[a-z0-9.]+@[a-z]+\\.[a-z]+", "name": "email-format"},
    {"rule": "allowed", "column": "country", "values": ["FR", "DE", "US"], "name": "country-set"},
    {"rule": "unique", "column": "order_id", "name": "order-unique"},
    {"rule": "expr", "expr": "shipped >= ordered", "name": "ship-after-order"},
    {"rule": "ref", "column": "customer", "ref": "customers", "ref_column": "id", "name": "customer-known"},
    {"rule": "freshness", "column": "seen", "max_age_s": 86400, "name": "seen-fresh"},
]


def planted(n: int = 20_000, rate: float = 0.01, seed: int = 3) -> tuple[pa.Table, pa.Table, dict[int, str]]:
    """Clean orders with 1% of rows broken by exactly one rule each (ten kinds: nine rules and the cast)."""
    rng = np.random.default_rng(seed)
    now = time.time()
    order_id = np.arange(n, dtype=np.int64)
    cols = {
        "order_id": order_id, "qty": [str(q) for q in rng.integers(1, 50, n)], "customer": rng.integers(0, 500, n),
        "age": rng.integers(18, 90, n), "email": [f"user{i}@mail.com" for i in range(n)],
        "country": rng.choice(["FR", "DE", "US"], n), "ordered": rng.integers(0, 1000, n),
        "seen": now - rng.uniform(0, 3600, n), "price": [f"{p:.2f}" for p in rng.uniform(1, 99, n)],
    }
    cols["shipped"] = cols["ordered"] + rng.integers(0, 10, n)
    bad_rows = rng.choice(n, int(n * rate), replace=False)
    truth: dict[int, str] = {}
    kinds = ["qty-int", "customer-present", "age-range", "email-format", "country-set", "order-unique",
             "ship-after-order", "customer-known", "seen-fresh", "cast:price"]
    customer = cols["customer"].astype(object)
    for j, row in enumerate(sorted(bad_rows.tolist())):
        kind = kinds[j % len(kinds)]
        truth[row] = kind
        if kind == "qty-int":
            cols["qty"][row] = "twelve"
        elif kind == "customer-present":
            customer[row] = None
        elif kind == "age-range":
            cols["age"][row] = 250
        elif kind == "email-format":
            cols["email"][row] = "not-an-email"
        elif kind == "country-set":
            cols["country"][row] = "XX"
        elif kind == "order-unique":  # the pair shares an id: both rows are violations
            partner = (row + 1) % n
            cols["order_id"][row] = -1 - row
            cols["order_id"][partner] = -1 - row
            truth[partner] = "order-unique"
        elif kind == "ship-after-order":
            cols["shipped"][row] = cols["ordered"][row] - 5
        elif kind == "customer-known":
            customer[row] = 10_000 + row
        elif kind == "seen-fresh":
            cols["seen"][row] = now - 10 * 86400
        else:
            cols["price"][row] = "n/a"
    cols["customer"] = pa.array(customer.tolist(), pa.int64())
    table = pa.table(cols)
    customers = pa.table({"id": pa.array(np.arange(500), pa.int64())})
    return table, customers, truth


def pipeline() -> TabularPipeline:
    return TabularPipeline.from_dict({"name": "orders", "sources": {"customers": "customers"}, "steps": [
        {"step": "validate", "rules": RULES},
        {"step": "cast", "types": {"price": "DOUBLE", "qty": "BIGINT"}},
    ]})


def test_every_planted_violation_is_quarantined_with_its_rule_and_no_valid_row() -> None:
    table, customers, truth = planted()
    result = run_tabular(pipeline(), table, sources={"customers": customers})
    q = result.quarantine
    found: dict[int, str] = {}
    for rule, row in zip(q.column("rule").to_pylist(), q.column("row").to_pylist(), strict=True):
        data = json.loads(row)
        key = data["order_id"]
        if key < 0:  # an order-unique pair: recover the two rows from the planted id
            key = -1 - key
            found[key if key not in found else (key + 1) % table.num_rows] = rule
            continue
        found[key] = rule
    partner_rows = {r for r, k in truth.items() if k == "order-unique"}
    assert {r: k for r, k in found.items() if r not in partner_rows} == \
        {r: k for r, k in truth.items() if r not in partner_rows}
    assert sum(1 for k in found.values() if k == "order-unique") == len(partner_rows)
    assert result.table.num_rows == table.num_rows - len(truth)
    assert result.table.schema.field("price").type == pa.float64()
    assert result.report["validate"]["violations"]["age-range"] == sum(1 for k in truth.values() if k == "age-range")
    assert {r: "cast:price" for r in found if found[r] == "cast:price"}


def test_fail_above_stops_the_run() -> None:
    table, customers, _ = planted(2000, rate=0.05)
    spec = TabularPipeline.from_dict({"sources": {"customers": "c"}, "steps": [
        {"step": "validate", "rules": RULES, "fail_above": 0.01}]})
    with pytest.raises(CurateError, match="over the limit"):
        run_tabular(spec, table, sources={"customers": customers})


def test_a_row_breaking_two_rules_names_both() -> None:
    spec = TabularPipeline.from_dict({"steps": [{"step": "validate", "rules": [
        {"rule": "range", "column": "a", "max": 5}, {"rule": "not_null", "column": "b"}]}]})
    result = run_tabular(spec, pa.table({"a": [1, 9], "b": pa.array([1, None], pa.int64())}))
    assert result.quarantine.column("rule").to_pylist() == ["range:a,not_null:b"]
    assert result.table.column("a").to_pylist() == [1]


@pytest.mark.parametrize(("spec", "match"), [
    ({"steps": [{"step": "nope"}]}, "unknown tabular step"),
    ({"steps": [{"step": "validate", "rules": [{"rule": "range", "column": "a"}]}]}, "needs `min`"),
    ({"steps": [{"step": "validate", "rules": [{"rule": "regex"}]}]}, "needs `pattern`"),
    ({"steps": [{"step": "dedup", "keys": ["a"], "wat": 1}]}, "unknown options"),
    ({"steps": [{"step": "dedup", "keys": ["a"], "keep": "latest"}]}, "needs `order_by`"),
    ({"steps": []}, "at least one step"),
])
def test_bad_specs_say_where(spec: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(PipelineSpecError, match=match):
        TabularPipeline.from_dict(spec)


def test_unknown_column_is_a_clear_error() -> None:
    spec = TabularPipeline.from_dict({"steps": [{"step": "validate", "rules": [{"rule": "not_null", "column": "zz"}]}]})
    with pytest.raises(PipelineSpecError, match="no column 'zz'"):
        run_tabular(spec, pa.table({"a": [1]}))


def test_steps_cannot_reach_files() -> None:
    where = "a IN (SELECT 1 FROM read_csv('/etc/passwd'))"
    spec = TabularPipeline.from_dict({"steps": [{"step": "filter", "where": where}]})
    with pytest.raises(Exception, match=r"(?i)external|disabled|permission"):
        run_tabular(spec, pa.table({"a": [1]}))

"""Filter expressions are bounded (size, depth), give a FilterError for anything they cannot run, and are checked
before any shard is read."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.errors import StoreError
from granary.store import Store
from granary.store.filter import MAX_DEPTH, MAX_NODES, FilterError, check_filter, compile_filter, matches

TABLE = pa.table({"id": [f"d{i}" for i in range(50)], "text": [f"t{i}" * (i % 7) for i in range(50)],
                  "n": list(range(50))})


@pytest.mark.slow
def test_nine_thousand_or_terms_run_and_give_the_right_rows() -> None:
    # In a child process: before the fix, Arrow recursed once per term and the process died with a segfault.
    code = textwrap.dedent("""
        import pyarrow as pa, pyarrow.compute as pc
        from granary.store.filter import matches
        t = pa.table({"n": list(range(30000))})
        expr = " or ".join(f"n == {3 * i}" for i in range(9000))
        mask = matches(t, expr)
        print(int(pc.sum(mask).as_py()), mask[0].as_py(), mask[1].as_py(), mask[26997].as_py())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9000", "True", "False", "True"]


def test_too_many_terms_is_a_clear_error() -> None:
    expr = " or ".join(f"n == {i}" for i in range(MAX_NODES // 3 + 10))
    with pytest.raises(FilterError, match=r"more than 100,000 parts.*col in \[") as info:
        compile_filter(expr)
    assert len(str(info.value)) < 600  # the message quotes the start of the filter, not all of it


@pytest.mark.parametrize("expr", [
    "not " * 100_000 + "n == 1",
    "(" * 5_000 + "n == 1" + ")" * 5_000,
    "n == " + "-" * 100_000 + "1",
    " and ".join(["(n == 1"] * 150) + ")" * 150,
    "lower(" * 3_000 + "text" + ")" * 3_000 + " == 'a'",
])
def test_very_deep_expressions_are_a_filter_error(expr: str) -> None:
    with pytest.raises(FilterError, match=r"nested|too long"):
        compile_filter(expr)


def test_depth_at_the_limit_still_compiles() -> None:
    nots = MAX_DEPTH - 2  # each `not` is one level, then the comparison, then its operands
    expr = "not " * nots + "n == 1"
    assert matches(TABLE, expr).to_pylist() == [(i == 1) != (nots % 2 == 1) for i in range(50)]
    with pytest.raises(FilterError, match="nested"):
        compile_filter("not " + expr)


@pytest.mark.parametrize(("expr", "why"), [
    ("not 'a'", "'not' needs conditions"),
    ("'a' and 'b'", "'and' needs conditions"),
    ("n == 1 or 3", "'or' needs conditions"),
    ("lower(1) == 'a'", r"lower\(\) takes a column"),
    ("len('abc') > 1", r"len\(\) takes a column"),
    ("startswith(text, n)", "string literal"),
    ("n in [id]", "literals only"),
    ("'a' in ['a']", "'in' takes a column"),
    ("1 is None", "'is None' takes a column"),
    ("n in [1, 'a']", "mixes types"),
    ("-n < 1", "numbers only"),
    ("1", "constant"),
    ("n + 1 > 2", "BinOp is not allowed"),
    ("n.__class__", "Attribute is not allowed"),
    ("", "cannot parse"),
])
def test_bad_expressions_are_filter_errors_never_type_errors(expr: str, why: str) -> None:
    with pytest.raises(FilterError, match=why):
        check_filter(expr, TABLE.schema)


@pytest.mark.parametrize("expr", ["text < 5", "n == 'x'", "len(n) > 1", "lower(n) == 'a'", "n"])
def test_type_mismatches_are_found_on_the_schema_alone(expr: str) -> None:
    with pytest.raises(FilterError, match=r"types|not true/false|text"):
        check_filter(expr, TABLE.schema)
    with pytest.raises(FilterError):
        matches(TABLE, expr)


_ATOMS = st.sampled_from(["n", "id", "text", "1", "-2", "'d3'", "None", "True", "len(text)", "lower(id)",
                          "[1, 2]", "['d1']", "nosuch", "startswith(id, 'd1')", "contains(text, 't3')"])
_OPS = st.sampled_from([" == ", " != ", " < ", " >= ", " and ", " or ", " in ", " not in ", " is ", " is not ",
                        " + ", ", "])


@st.composite
def _expressions(draw: st.DrawFn) -> str:
    parts = [draw(_ATOMS)]
    for _ in range(draw(st.integers(0, 6))):
        parts.append(draw(_OPS))
        atom = draw(_ATOMS)
        parts.append(f"not ({atom})" if draw(st.booleans()) else atom)
    expr = "".join(parts)
    return f"({expr})" if draw(st.booleans()) else expr


@settings(max_examples=200, deadline=None)
@given(expr=_expressions())
def test_any_expression_compiles_and_runs_or_is_a_filter_error(expr: str) -> None:
    try:
        mask = matches(TABLE, expr)
    except FilterError:
        return
    assert mask.type == pa.bool_() and len(mask) == TABLE.num_rows and mask.null_count == 0


@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.integers(0, 80), min_size=1, max_size=300))
def test_a_long_or_chain_selects_what_in_selects(ids: list[int]) -> None:
    chained = " or ".join(f"id == 'd{i}'" for i in ids)
    listed = f"id in {[f'd{i}' for i in ids]}"
    assert matches(TABLE, chained).to_pylist() == matches(TABLE, listed).to_pylist()
    assert sum(matches(TABLE, chained).to_pylist()) == len({i for i in ids if i < 50})


def _table(n: int) -> pa.Table:
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("lang", pa.string())])
    return pa.table({"id": [f"d{i}" for i in range(n)], "text": ["x"] * n, "lang": ["en"] * n}, schema=schema)


@pytest.mark.parametrize("bad", ["nosuch == 1", "text < 5", "lang ==", "not " * 10_000 + "lang == 'en'"])
def test_an_invalid_filter_fails_before_any_shard_is_read_and_commits_nothing(
        any_store: Store, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    any_store.create_dataset("web")
    any_store.commit_table("web", _table(20), message="m")
    any_store.commit_table("web", _table(0), message="empty", mode="overwrite")  # an empty version
    before = [v.id for v in any_store.log("web")]

    def no_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("a shard was read before the filter was checked")

    monkeypatch.setattr("granary.store.transaction.read_shard", no_reads)
    with pytest.raises(FilterError), any_store.transaction("web") as txn:
        txn.delete_where(bad)
        txn.commit(message="delete", allow_empty=True)
    assert [v.id for v in any_store.log("web")] == before


def test_a_delete_on_a_branch_with_no_commits_commits_nothing(any_store: Store) -> None:
    any_store.create_dataset("web")
    with pytest.raises(StoreError, match="nothing to delete from: web@main"), any_store.transaction("web") as txn:
        txn.delete_where("nosuch == 1")  # no schema yet: only its syntax can be checked here
        txn.commit(message="delete", allow_empty=True)
    assert any_store.versions("web") == []


def test_a_delete_is_checked_against_the_rows_written_in_the_same_transaction(any_store: Store) -> None:
    any_store.create_dataset("web")
    with pytest.raises(FilterError, match="unknown column 'nosuch'"), \
            any_store.transaction("web", mode="overwrite") as txn:
        txn.delete_where("nosuch == 1")
        txn.write(_table(5))
        txn.commit(message="m")
    assert any_store.versions("web") == []

"""The store commands end to end through the real CLI entry point (in-process, Typer's runner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from granary.cli.main import app

runner = CliRunner()


def run(*args: str, ok: bool = True):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args), catch_exceptions=False) if ok else runner.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    lines = [json.dumps({"id": f"d{i}", "text": f"text number {i}", "src": "web"}) for i in range(200)]
    lines.insert(50, "{oops")
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ingest_show_log_ls_json(corpus: Path) -> None:
    out = json.loads(run("ingest", str(corpus), "-d", "web", "--on-error", "quarantine", "--license", "MIT",
                         "--json").stdout)
    assert out["records"] == 200 and out["quarantined"] == 1 and out["version"]
    shown = json.loads(run("show", "web", "--json", "--quarantine").stdout)
    assert shown["num_rows"] == 200 and shown["metadata"] == {"license": "MIT"}
    assert shown["quarantine"][0]["line"] == 51 and "invalid JSON" in shown["quarantine"][0]["reason"]
    assert [d["name"] for d in json.loads(run("ls", "--json").stdout)] == ["web"]
    assert len(json.loads(run("log", "web", "--json").stdout)) == 1


def test_ingest_failure_is_one_clear_error(corpus: Path) -> None:
    result = run("ingest", str(corpus), "-d", "web", ok=False)
    assert result.exit_code == 1
    assert "in.jsonl:51" in result.output and "--on-error quarantine" in result.output
    assert "Traceback" not in result.output


def test_branch_tag_rollback_diff_export(corpus: Path, tmp_path: Path) -> None:
    run("ingest", str(corpus), "-d", "web", "--on-error", "quarantine")
    first = json.loads(run("show", "web", "--json").stdout)["id"]
    run("tag", "web", "v1")
    run("branch", "web", "exp")
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "new", "text": "added later", "src": "web"}) + "\n")
    run("ingest", str(more), "-d", "web")
    d = json.loads(run("diff", "web@v1", "web", "--json").stdout)
    assert d["rows_added"] == 1 and d["rows_removed"] == 0
    run("rollback", "web", "v1")
    assert json.loads(run("show", "web", "--json").stdout)["id"] == first
    refs = json.loads(run("branch", "web", "--json").stdout)
    assert {(r["kind"], r["name"]) for r in refs} == {("branch", "main"), ("branch", "exp"), ("tag", "v1")}
    out = tmp_path / "out.jsonl"
    run("export", "web", "-o", str(out), "--format", "jsonl")
    assert len(out.read_text().splitlines()) == 200
    pq_out = tmp_path / "out.parquet"
    run("export", "web@v1", "-o", str(pq_out), "--format", "parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(pq_out).num_rows == 200


def test_verify_exit_code_names_bad_shard(corpus: Path) -> None:
    run("ingest", str(corpus), "-d", "web", "--on-error", "quarantine")
    shown = json.loads(run("show", "web", "--json").stdout)
    assert json.loads(run("verify", "--json").stdout)["ok"] is True
    from granary.store import open_store

    store = open_store()
    key = shown["shards"][0]["key"]
    Path(store.objects.local_path(key)).write_bytes(b"garbage")
    result = run("verify", "web", ok=False)
    assert result.exit_code == 1 and key in result.output


def test_user_errors_have_no_traceback() -> None:
    for args in (["show", "nope"], ["show", "../etc@x"], ["log", "web@"], ["gc", "--grace", "-1"]):
        result = run(*args, ok=False)
        assert result.exit_code != 0
        assert "Traceback" not in result.output, result.output


def test_gc_dry_run(corpus: Path) -> None:
    run("ingest", str(corpus), "-d", "web", "--on-error", "quarantine")
    out = json.loads(run("gc", "--dry-run", "--json").stdout)
    assert out["dry_run"] is True and out["deleted"] == []


def test_delete_where(corpus: Path) -> None:
    run("ingest", str(corpus), "-d", "web", "--on-error", "quarantine")
    out = json.loads(run("delete", "web", "--where", "id in ['d1', 'd2'] or startswith(text, 'text number 19')",
                         "--json").stdout)
    assert out["rows_deleted"] == 2 + 11 and out["rows"] == 200 - 13
    bad = run("delete", "web", "--where", "nosuchcol == 1", ok=False)
    assert bad.exit_code == 1 and "unknown column 'nosuchcol'" in bad.output


def test_ingest_encrypt_writes_ciphertext_that_reads_back(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANARY_ENCRYPT", "")  # recorded, so the flag's setting is undone after the test
    run("ingest", str(corpus), "-d", "web", "--on-error", "quarantine", "--encrypt")
    monkeypatch.setenv("GRANARY_SECURE", "1")  # readers open the key provider
    shown = json.loads(run("show", "web", "--json").stdout)
    assert all("enc" in s["meta"] for s in shown["shards"])
    from granary.store import open_store

    store = open_store()
    raw = Path(store.objects.local_path(shown["shards"][0]["key"])).read_bytes()
    assert b"text number 1" not in raw  # ciphertext on disk
    assert store.read_table("web").num_rows == 200

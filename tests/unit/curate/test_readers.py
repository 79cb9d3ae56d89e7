"""Readers: every bad-input kind is quarantined with its place and reason; good records all come through."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from granary.curate.errors import PipelineSpecError
from granary.curate.readers import ReaderConfig, plan_units, read_unit, reader_for
from granary.store.ingest.sink import BadRecordSink


def _read_all(paths: list[Path], **kw: object) -> tuple[pa.Table, BadRecordSink]:
    units, _ = plan_units(ReaderConfig(type="files", paths=tuple(str(p) for p in paths)), None)
    sink = BadRecordSink("quarantine")
    tables = [t for u in units for t in read_unit(u, store=None, sink=sink, batch_rows=100, **kw)]  # type: ignore[arg-type]
    sink.flush()
    return pa.concat_tables(tables, promote_options="permissive"), sink


def test_bad_records_are_quarantined_with_reasons(tmp_path: Path) -> None:
    good = [json.dumps({"id": "ok1", "text": "fine"}).encode(), json.dumps({"id": "ok2", "text": "also"}).encode()]
    lines = [good[0], b"{not json", json.dumps({"id": "n", "text": 5}).encode(), json.dumps({"id": "m"}).encode(),
             b'{"id": "u", "text": "bad \xff utf8"}', json.dumps({"id": "huge", "text": "x" * 2000}).encode(), good[1]]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    table, sink = _read_all([tmp_path], max_doc_bytes=1000)
    assert sorted(table.column("id").to_pylist()) == ["ok1", "ok2"]
    q = pa.concat_tables(sink.tables).to_pylist()
    reasons = " | ".join(f"{r['source'].rsplit('/', 1)[-1]}:{r['line']}:{r['reason']}" for r in q)
    assert sink.count == 6, reasons
    assert "empty.jsonl:None:empty file" in reasons
    assert "huge document" in reasons and "a.jsonl:2:" in reasons
    assert table.column("source").to_pylist() == ["a.jsonl", "a.jsonl"]


def test_compressed_parquet_and_text_directories(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "text": f"doc {i}"} for i in range(250)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "one.md").write_text("# one")
    (docs / "two.txt").write_text("two")
    (docs / "bad.txt").write_bytes(b"\xff\xfe")
    table, sink = _read_all([tmp_path])
    assert table.num_rows == 752
    assert {"docs/one.md", "docs/two.txt"} <= set(table.column("id").to_pylist())
    assert sink.count == 1 and "invalid UTF-8" in sink.tables[0].column("reason")[0].as_py()


def test_reader_choice_and_validation(tmp_path: Path) -> None:
    assert reader_for("web@main") == ReaderConfig(type="version", ref="web@main")
    assert reader_for(str(tmp_path)).type == "files"
    with pytest.raises(PipelineSpecError, match="needs `ref`"):
        ReaderConfig(type="version")
    with pytest.raises(PipelineSpecError, match="unknown reader"):
        ReaderConfig(type="csvx", paths=("x",))  # type: ignore[arg-type]

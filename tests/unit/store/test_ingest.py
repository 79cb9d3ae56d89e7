from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from granary.errors import IngestError, StoreError
from granary.store import Store
from granary.store.ingest import ingest
from granary.store.ingest.ids import content_ids


def _lines(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"id": f"r{i}", "text": f"record {i} text", "score": i * 0.5}) for i in range(start, start + n)]


def test_jsonl_plain_gz_zst_are_equivalent(store: Store, tmp_path: Path) -> None:
    body = ("\n".join(_lines(300)) + "\n").encode()
    (tmp_path / "a.jsonl").write_bytes(body)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    tables = []
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst"):
        r = ingest(store, [tmp_path / name], name.split(".")[0])
        assert r.records == 300 and r.quarantined == 0
        tables.append(store.read_table(name.split(".")[0]))
    assert tables[0].equals(tables[1]) and tables[1].equals(tables[2])
    assert tables[0].schema.names == ["id", "text", "score"]


def test_bad_records_fail_with_file_and_line(store: Store, tmp_path: Path) -> None:
    lines = _lines(10)
    lines.insert(6, '{"id": "x", "text": ')
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError) as info:
        ingest(store, [tmp_path / "in.jsonl"], "web")
    assert info.value.line == 7 and info.value.path.endswith("in.jsonl") and "invalid JSON" in info.value.reason
    with pytest.raises(StoreError):
        store.resolve("web")  # nothing was committed


def test_quarantine_keeps_every_bad_record_with_reason(store: Store, tmp_path: Path) -> None:
    lines = _lines(2000)
    bad = {
        101: '{"id": "a", "text": 5}',
        502: "[1, 2, 3]",
        903: '{"id": "c"}',
        1504: '{"id": "d", "text": "ok", "score": "not a number"}',
        1805: '{"id": {"x": 1}, "text": "t"}',
    }
    for line_no in sorted(bad):
        lines.insert(line_no - 1, bad[line_no])
    data = ("\n".join(lines) + "\n").encode() + b'{"id": "u", "text": "bad \xff byte"}\n'
    (tmp_path / "in.jsonl").write_bytes(data)
    r = ingest(store, [tmp_path / "in.jsonl"], "web", on_error="quarantine")
    assert r.records == 2000 and r.quarantined == 6
    q = store.read_side_table("web", "quarantine").to_pylist()
    got = {row["line"]: row["reason"] for row in q}
    assert set(got) == {*bad, len(lines) + 1}
    assert "must be a string" in got[101] and "expected a JSON object" in got[502] and "missing field" in got[903]
    assert "'score' must be double" in got[1504] and "invalid UTF-8" in got[len(lines) + 1]
    assert {row["raw"] for row in q if row["line"] == 903} == {b'{"id": "c"}'}
    assert store.read_table("web").num_rows == 2000


def test_missing_ids_get_stable_content_hashes(store: Store, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "alpha"}\n{"text": "beta", "id": null}\n{"id": 7, "text": "c"}\n')
    ingest(store, [tmp_path / "in.jsonl"], "web", on_error="quarantine")
    ids = store.read_table("web").column("id").to_pylist()
    assert ids[:2] == content_ids(pa.array(["alpha", "beta"])).to_pylist()
    assert ids[2] == "7"
    import xxhash

    assert ids[0] == xxhash.xxh3_128_hexdigest(b"alpha")


def test_parquet_csv_and_text_folder(store: Store, tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["one", None]}), tmp_path / "in.parquet")
    (tmp_path / "in.csv").write_text('id,text\nc1,"hello, world"\nc2,"multi\nline"\nc3,x,extra\n')
    docs = tmp_path / "notes"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Title\nbody")
    (docs / "sub" / "b.txt").write_text("plain text")
    (docs / "bad.txt").write_bytes(b"\xff\xfe bad")
    r = ingest(store, [tmp_path / "in.parquet"], "pq", on_error="quarantine")
    assert (r.records, r.quarantined) == (1, 1)
    r = ingest(store, [tmp_path / "in.csv"], "csv", on_error="quarantine")
    assert r.records == 2 and r.quarantined == 1
    assert store.read_table("csv").column("text").to_pylist() == ["hello, world", "multi\nline"]
    assert store.read_side_table("csv", "quarantine").column("reason").to_pylist()[0].startswith("malformed CSV row")
    r = ingest(store, [docs], "notes", on_error="quarantine")
    assert (r.records, r.quarantined) == (2, 1)
    t = store.read_table("notes")
    assert sorted(t.column("path").to_pylist()) == ["a.md", "sub/b.txt"]


def test_empty_or_unknown_inputs(store: Store, tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(StoreError, match="no records"):
        ingest(store, [tmp_path / "empty.jsonl"], "web")
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(StoreError, match="cannot tell the format"):
        ingest(store, [tmp_path / "x.bin"], "web")
    with pytest.raises(StoreError, match="does not exist"):
        ingest(store, [tmp_path / "nope.jsonl"], "web")


def test_truncated_compressed_input_is_quarantined_not_lost(store: Store, tmp_path: Path) -> None:
    body = ("\n".join(_lines(1000)) + "\n").encode()
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(body)[:-20])
    r = ingest(store, [tmp_path / "t.jsonl.gz"], "web", on_error="quarantine")
    assert r.quarantined == 1
    reason = store.read_side_table("web", "quarantine").column("reason").to_pylist()[0]
    assert "truncated" in reason


def test_large_input_is_cut_into_shards(store: Store, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("\n".join(_lines(5000)) + "\n")
    r = ingest(store, [tmp_path / "in.jsonl"], "web")
    v = store.resolve("web")
    assert r.records == 5000 and v.num_shards >= 2  # 64 KiB shards in the fixture
    assert store.read_table("web").column("id").to_pylist() == [f"r{i}" for i in range(5000)]


def test_hugging_face_roundtrip(store: Store, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="Hugging Face interop needs granary[hf]")
    from granary.store.export import export

    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "text": ["one", "two"], "label": [0, 1]})
    ds.save_to_disk(str(tmp_path / "hf-in"))
    r = ingest(store, [tmp_path / "hf-in"], "hf")
    assert r.records == 2
    assert store.read_table("hf").to_pylist() == [{"id": "a", "text": "one", "label": 0},
                                                  {"id": "b", "text": "two", "label": 1}]
    moved: list[int] = []
    assert export(store, "hf", tmp_path / "hf-out", fmt="hf", on_rows=moved.append) == 2
    assert sum(moved) == 2  # the progress bar reaches every row
    back = datasets.load_from_disk(str(tmp_path / "hf-out"))
    assert back["text"] == ["one", "two"] and back["label"] == [0, 1]

"""Hostile and damaged inputs: ingest never crashes, never loses a record silently, and says what it skipped."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from granary.cli.main import app
from granary.config import Settings
from granary.errors import IngestError
from granary.store import Store, open_store
from granary.store.ingest import BadRecordSink, ingest
from granary.store.ingest.compressed import DamagedInputError, InputStream
from granary.store.ingest.jsonl import JsonlReader
from granary.store.ingest.nesting import MAX_DEPTH, json_depth

_CLI = "import sys; from granary.cli.main import main; sys.argv[0] = 'granary'; main()"


def _granary(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process: a segfault shows as a negative return code, not a lost test run."""
    env = {**os.environ, "GRANARY_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", _CLI, *args], capture_output=True, text=True, env=env, timeout=300)


def _cli(home: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    """The CLI in this process (for inputs that cannot crash it): exit code and everything it printed."""
    monkeypatch.setenv("GRANARY_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _good(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"id": f"g{i}", "text": f"good record {i}"}) for i in range(start, start + n)]


def _nested(levels: int, bracket: str = "{", key: str = "meta") -> str:
    inner = "1"
    for _ in range(levels - 1):  # the record itself is the first level
        inner = f'{{"a": {inner}}}' if bracket == "{" else f"[{inner}]"
    return json.dumps({"id": f"deep{levels}{bracket}", "text": "x"})[:-1] + f', "{key}": {inner}}}'


def _deep_line(levels: int, bracket: str) -> str:
    opener, closer = ('{"a": ', "}") if bracket == "{" else ("[", "]")
    return '{"id": "deep", "text": "x", "meta": ' + opener * (levels - 1) + "1" + closer * (levels - 1) + "}"


@pytest.mark.slow
def test_tens_of_thousands_of_levels_are_quarantined_and_the_good_records_kept(tmp_path: Path) -> None:
    lines = [*_good(5),
             _deep_line(50_000, "{"),  # pyarrow's parser segfaulted on these
             _deep_line(30_000, "["),
             _deep_line(5_000, "{"),  # parsed, committed, then unreadable ("schema too deeply nested")
             json.dumps({"id": "brackets", "text": "{[" * 3_000}),  # brackets inside a string are text
             *_good(5, start=5)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    done = _granary(tmp_path / "home", "ingest", str(src), "-d", "web", "--on-error", "quarantine", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["records"] == 11 and report["quarantined"] == 3
    assert report["reasons"] == {"nested too deeply": 3}
    store = open_store(Settings.from_env(home=tmp_path / "home"))
    kept = store.read_table("web")
    assert sorted(kept.column("id").to_pylist()) == sorted([f"g{i}" for i in range(10)] + ["brackets"])
    quarantine = store.read_side_table("web", "quarantine")
    assert quarantine is not None and sorted(quarantine.column("line").to_pylist()) == [6, 7, 8]
    assert all("more than 32 levels" in r for r in quarantine.column("reason").to_pylist())
    assert len(quarantine.column("raw")[0].as_py()) > 10_000  # the record itself is kept, not just its line number
    verified = _granary(tmp_path / "home", "verify", "web")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_deep_records_fail_the_ingest_with_their_line_in_fail_mode(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([*_good(3), _deep_line(50_000, "["), *_good(3, 3)]) + "\n")
    done = _granary(tmp_path / "home", "ingest", str(src), "-d", "web")
    assert done.returncode == 1, done.stderr
    assert f"{src}:4: nested too deeply" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 60, 2_000])
@pytest.mark.parametrize("bracket", ["{", "["])
def test_the_limit_is_exact(store: Store, tmp_path: Path, levels: int, bracket: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([*_good(2), _nested(levels, bracket), *_good(2, 2)]) + "\n")
    assert json_depth(_nested(levels, bracket).encode()) == min(levels, MAX_DEPTH + 1)
    report = ingest(store, [src], "web", on_error="quarantine")
    assert (report.records, report.quarantined) == ((5, 0) if levels <= MAX_DEPTH else (4, 1))
    assert store.read_table("web").num_rows == report.records


_leaf = st.one_of(st.integers(), st.booleans(), st.none(),
                  st.text(alphabet='{}[]"\\ ab\n', max_size=8))


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=150, deadline=None)
@given(value=st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(alphabet='{["\\k', max_size=3), inner, max_size=3),
                          max_leaves=40))
def test_json_depth_agrees_with_the_parsed_value(value: object) -> None:
    raw = json.dumps({"text": "t", "v": value}).encode()
    assert json_depth(raw, limit=10_000) == _depth({"text": "t", "v": value})


@settings(max_examples=25, deadline=None)
@given(depths=st.lists(st.integers(1, 45), min_size=1, max_size=30), stride=st.sampled_from([256, 4096]))
def test_exactly_the_records_within_the_limit_are_kept(tmp_path_factory: pytest.TempPathFactory,
                                                      depths: list[int], stride: int) -> None:
    # one field per shape, so records differ in nesting but never in a field's type
    lines = [_nested(d, b, key=f"m{d}{b}") for d, b in ((d, "{" if i % 2 else "[") for i, d in enumerate(depths))]
    src = tmp_path_factory.mktemp("depth") / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    sink = BadRecordSink("quarantine")
    kept = sum(t.num_rows for t in JsonlReader(src, sink, block_bytes=stride))
    assert kept == sum(d <= MAX_DEPTH for d in depths)
    sink.flush()
    bad_lines = [line for t in sink.tables for line in t.column("line").to_pylist()]
    assert sorted(bad_lines) == [i + 1 for i, d in enumerate(depths) if d > MAX_DEPTH]


def _body(n: int) -> bytes:
    return b"".join(json.dumps({"id": f"r{i}", "text": f"record {i} " * 8}).encode() + b"\n" for i in range(n))


def _truncated(tmp_path: Path, suffix: str) -> tuple[Path, bytes]:
    body = _body(20_000)
    packed = gzip.compress(body) if suffix == "gz" else zstandard.ZstdCompressor().compress(body)
    path = tmp_path / f"cut.jsonl.{suffix}"
    path.write_bytes(packed[: len(packed) // 2])
    return path, body


@pytest.mark.parametrize("suffix", ["zst", "gz"])
def test_a_truncated_file_is_reported_with_how_far_it_was_read(store: Store, tmp_path: Path, suffix: str) -> None:
    path, body = _truncated(tmp_path, suffix)
    report = ingest(store, [path], "web", on_error="quarantine")
    with InputStream(path) as stream, pytest.raises(DamagedInputError) as info:
        while stream.readinto(memoryview(bytearray(1 << 16))):
            pass
    assert info.value.kind == "truncated" and 0 < info.value.out_offset < len(body)
    complete = body[: info.value.out_offset].count(b"\n")  # every whole line before the cut is kept
    assert report.records == complete and report.quarantined == 1
    assert report.reasons == {"truncated input": 1}
    assert len(report.damaged) == 1 and f"lines 1-{complete} were read" in report.damaged[0]
    quarantine = store.read_side_table("web", "quarantine")
    assert quarantine is not None and quarantine.column("line").to_pylist() == [complete + 1]
    partial = quarantine.column("raw")[0].as_py()
    assert body[: info.value.out_offset].endswith(partial or b"\n")  # the incomplete last line is kept too


@pytest.mark.parametrize("suffix", ["zst", "gz"])
def test_a_truncated_file_in_fail_mode_commits_nothing(store: Store, tmp_path: Path, suffix: str) -> None:
    path, _ = _truncated(tmp_path, suffix)
    store.create_dataset("web")
    with pytest.raises(IngestError, match=r"truncated input: .* is truncated"):
        ingest(store, [path], "web")
    assert store.versions("web") == []


def test_multi_frame_and_multi_member_files_are_whole_and_garbage_is_corrupt(store: Store, tmp_path: Path) -> None:
    body = _body(3_000)
    zc = zstandard.ZstdCompressor()
    (tmp_path / "frames.jsonl.zst").write_bytes(zc.compress(body[:70_000]) + zc.compress(body[70_000:]))
    (tmp_path / "members.jsonl.gz").write_bytes(gzip.compress(body[:5]) + gzip.compress(body[5:]) + b"\0" * 8)
    for name in ("frames.jsonl.zst", "members.jsonl.gz"):
        report = ingest(store, [tmp_path / name], name.split(".")[0])
        assert (report.records, report.quarantined, report.damaged) == (3_000, 0, [])
    (tmp_path / "tail.jsonl.zst").write_bytes(zc.compress(body) + b"not zstd at all")
    with pytest.raises(IngestError, match=r"corrupt input: .*tail.jsonl.zst is corrupt in the compressed bytes"):
        ingest(store, [tmp_path / "tail.jsonl.zst"], "tail")


def _corrupt_parquet(path: Path) -> None:
    rows = [{"id": f"p{i}", "text": f"row {i} " * 10} for i in range(6_000)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2_000, compression="snappy")
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata.row_group(1).column(1)
    start = meta.data_page_offset
    data[start + 40: start + 240] = bytes(200)  # damage the middle row group's text page only
    path.write_bytes(bytes(data))


def test_a_corrupt_parquet_row_group_is_quarantined_and_the_others_kept(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    _corrupt_parquet(path)
    report = ingest(store, [path], "web", on_error="quarantine")
    assert report.records == 4_000 and report.quarantined == 1
    assert report.reasons == {"corrupt Parquet data": 1}
    assert "row group 1 (rows 2,001-4,000)" in report.damaged[0]
    assert store.read_table("web").column("id").to_pylist() == [f"p{i}" for i in [*range(2000), *range(4000, 6000)]]


@pytest.mark.parametrize("content", ["corrupt", "not parquet"])
def test_corrupt_parquet_in_fail_mode_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        content: str) -> None:
    path = tmp_path / "bad.parquet"
    if content == "corrupt":
        _corrupt_parquet(path)
    else:
        path.write_bytes(b"PAR1 this is not a parquet file")
    code, out = _cli(tmp_path / "home", monkeypatch, "ingest", str(path), "-d", "web")
    assert code == 1 and "Traceback" not in out
    assert f"bad record at {path}" in out and ("corrupt Parquet data" in out or "unreadable Parquet file" in out)


def test_a_ragged_csv_gives_the_line_and_no_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,text\n1,hello\n2,world,extra\n3,fine\n")
    code, out = _cli(tmp_path / "home", monkeypatch, "ingest", str(path), "-d", "web")
    assert code == 1 and "Traceback" not in out
    assert f"{path}:3: malformed CSV row: expected 2 columns, got 3" in out
    code, out = _cli(tmp_path / "home", monkeypatch, "ingest", str(path), "-d", "web", "--on-error", "quarantine",
                     "--json")
    assert code == 0, out
    assert json.loads(out)["records"] == 2 and json.loads(out)["quarantined"] == 1


def test_files_of_unknown_format_in_a_folder_are_reported_as_skipped(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text("\n".join(_good(3)) + "\n")
    (folder / "report.pdf").write_bytes(b"%PDF-1.4")
    (folder / "sub" / "sheet.xlsx").write_bytes(b"PK")
    (folder / ".DS_Store").write_bytes(b"\0")
    code, out = _cli(tmp_path / "home", monkeypatch, "ingest", str(folder), "-d", "web", "--json")
    assert code == 0, out
    assert json.loads(out)["skipped"] == [str(folder / "report.pdf"), str(folder / "sub" / "sheet.xlsx")]
    code, out = _cli(tmp_path / "home", monkeypatch, "ingest", str(folder), "-d", "web2")
    assert code == 0, out
    assert "skipped (unknown format)" in out and "report.pdf" in out


def test_an_unreadable_text_file_is_reported_not_a_traceback(store: Store, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.txt").write_text("one document")
    (tmp_path / "b.txt").write_text("another")
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:  # a disk error or a permission the test's root user cannot lack
        if self.name == "b.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    report = ingest(store, [tmp_path], "docs", on_error="quarantine")
    assert report.records == 1 and report.reasons == {"unreadable file": 1}
    assert report.damaged == [f"{tmp_path / 'b.txt'}: unreadable file: [Errno 13] Permission denied: "
                              f"'{tmp_path / 'b.txt'}'; check its permissions or copy it again"]

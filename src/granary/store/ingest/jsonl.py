"""Streaming JSONL reader: large blocks through pyarrow's JSON parser, exact per-line checks on bad blocks."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from granary.store.ingest.compressed import DamagedInputError, InputStream
from granary.store.ingest.nesting import MAX_DEPTH, DepthGuard, json_depth, too_deep, type_depth
from granary.store.ingest.sink import BadRecordSink

log = logging.getLogger(__name__)

BLOCK_BYTES = 32 * 1024 * 1024
_NON_SPACE = re.compile(rb"\S")


class JsonlReader:
    """Read one JSONL file as record batches with a fixed schema.

    The first good block fixes the schema (``id`` and ``text`` are strings; all-null fields become
    strings). A block that pyarrow rejects, or that has records without text, is re-read line by
    line so every bad record is reported with its line number and reason while the good ones are kept.

    Args:
        path: the file.
        sink: receives bad records.
        schema: a schema to hold to (from earlier files of the same ingest).
        on_bytes: called with the number of raw (compressed) bytes consumed.
    """

    def __init__(self, path: Path, sink: BadRecordSink, *, schema: pa.Schema | None = None,
                 on_bytes: Callable[[int], None] | None = None, block_bytes: int = BLOCK_BYTES) -> None:
        self.path = path
        self.sink = sink
        self.schema = schema
        self.on_bytes = on_bytes
        self.block_bytes = block_bytes
        self.ignored_fields: set[str] = set()

    def __iter__(self) -> Iterator[pa.Table]:
        try:
            stream = InputStream(self.path)
        except OSError as exc:
            self.sink.file_problem(str(self.path), None, f"unreadable file: {exc}")
            return
        with stream:
            yield from self._blocks(stream)

    def _blocks(self, stream: InputStream) -> Iterator[pa.Table]:
        # One reusable buffer: read into it, parse everything up to the last newline straight from it (no
        # copy), then move the partial last line to the front. Copying 32 MiB blocks around cost as much as
        # parsing them.
        buf = bytearray(self.block_bytes)
        guard = DepthGuard()
        fill = pos = 0
        line_no = 1
        damage: DamagedInputError | OSError | None = None
        while True:
            if fill == len(buf):  # a single line longer than the buffer: grow (a new buffer, no views alive)
                bigger = bytearray(2 * len(buf))
                bigger[:fill] = buf
                buf = bigger
            try:
                n = stream.readinto(memoryview(buf)[fill:])
            except (DamagedInputError, OSError) as exc:  # what was read before it is still parsed below
                n, damage = 0, exc
            end = fill + n
            if n or damage is not None:
                cut = buf.rfind(b"\n", 0, end)
                if cut < 0 and n:
                    fill = end
                    continue
                stop = cut + 1
            else:
                stop = end
            if _NON_SPACE.search(buf, 0, stop):
                for line, raw in guard.blank_deep_lines(buf, stop):  # before pyarrow, whose parser recurses
                    self.sink.bad(str(self.path), line_no + line, too_deep(), raw)
                table = self._parse(memoryview(buf)[:stop], line_no)
                if table is not None and table.num_rows:
                    yield table
            line_no += buf.count(b"\n", 0, stop)
            if damage is not None:
                self._damaged(damage, line_no, bytes(buf[stop:end]))
                return
            rest = end - stop
            buf[:rest] = buf[stop:end]
            fill = rest
            if self.on_bytes is not None:
                self.on_bytes(stream.raw_offset - pos)
                pos = stream.raw_offset
            if not n:
                return

    def _damaged(self, exc: DamagedInputError | OSError, line: int, tail: bytes) -> None:
        """Report a file that could not be read to its end: how far it got, and the incomplete last record."""
        kept = f"lines 1-{line - 1} were read" if line > 1 else "no complete line was read"
        if isinstance(exc, DamagedInputError):
            reason = f"{exc.kind} input: {exc.args[0]}; {kept}"
        else:
            reason = f"unreadable file: {exc}; {kept}"
        if tail.strip():
            reason += f", line {line} is incomplete ({len(tail):,} bytes)"
        hint = exc.hint if isinstance(exc, DamagedInputError) else "check the disk and copy the file again"
        self.sink.file_problem(str(self.path), line, f"{reason}; {hint}", tail or None)

    def _parse(self, block: memoryview, first_line: int) -> pa.Table | None:
        table = self._fast(block)
        if table is None:
            return self._slow(block.tobytes(), first_line)
        return table

    def _fast(self, block: memoryview) -> pa.Table | None:
        parse = pajson.ParseOptions(
            explicit_schema=self.schema or pa.schema([("id", pa.string()), ("text", pa.string())]),
            unexpected_field_behavior="infer",
        )
        try:
            table = pajson.read_json(pa.BufferReader(pa.py_buffer(block)),
                                     read_options=pajson.ReadOptions(block_size=1 << 22), parse_options=parse)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if "text" not in table.column_names or table.column("text").null_count or not _valid_utf8(table):
            return None
        if 1 + max((type_depth(f.type) for f in table.schema), default=0) > MAX_DEPTH:
            return None  # some record nests too deeply: the line-by-line pass finds and quarantines it
        if self.schema is None:
            self.schema = _settle(table.schema)
            return table.cast(self.schema)
        extra = [c for c in table.column_names if c not in self.schema.names]
        if extra:
            self._ignore(extra)
            table = table.drop_columns(extra)
        return table.select(self.schema.names)

    def _ignore(self, fields: list[str]) -> None:
        new = set(fields) - self.ignored_fields
        if new:
            log.warning("%s: fields %s appear after the schema was fixed and are not stored", self.path, sorted(new))
            self.ignored_fields |= new

    def _slow(self, block: bytes, first_line: int) -> pa.Table | None:
        parsed: list[tuple[int, bytes, Any]] = []
        source = str(self.path)
        for offset, raw in enumerate(block.split(b"\n")):
            if not raw.strip():
                continue
            line = first_line + offset
            if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and json_depth(raw, MAX_DEPTH) > MAX_DEPTH:
                self.sink.bad(source, line, too_deep(), raw)
                continue
            try:
                parsed.append((line, raw, json.loads(raw.decode("utf-8"))))
            except UnicodeDecodeError as exc:
                self.sink.bad(source, line, f"invalid UTF-8 at byte {exc.start}", raw)
            except json.JSONDecodeError as exc:
                self.sink.bad(source, line, f"invalid JSON: {exc.msg} at column {exc.colno}", raw)
            except RecursionError:  # unreachable after the depth check; kept so no record is ever lost silently
                self.sink.bad(source, line, too_deep(), raw)
        if self.schema is None:
            self.schema = _infer_schema([obj for _, _, obj in parsed if isinstance(obj, dict)])
        rows: list[dict[str, Any]] = []
        for line, raw, obj in parsed:
            reason = self._check(obj)
            if reason is not None:
                self.sink.bad(source, line, reason, raw)
                continue
            rows.append(obj)
        if not rows:
            return None
        extra = {k for r in rows for k in r if k not in self.schema.names}
        if extra:
            self._ignore(sorted(extra))
        return pa.Table.from_pylist([{k: r.get(k) for k in self.schema.names} for r in rows], schema=self.schema)

    def _check(self, obj: Any) -> str | None:
        if not isinstance(obj, dict):
            return f"invalid record: expected a JSON object, got {type(obj).__name__}"
        text = obj.get("text")
        if text is None:
            return "missing field: 'text'"
        if not isinstance(text, str):
            return f"wrong type: field 'text' must be a string, got {type(text).__name__}"
        rid = obj.get("id")
        if isinstance(rid, (int, float)) and not isinstance(rid, bool):
            obj["id"] = str(rid)
        elif rid is not None and not isinstance(rid, str):
            return f"wrong type: field 'id' must be a string, got {type(rid).__name__}"
        assert self.schema is not None
        for field in self.schema:
            value = obj.get(field.name)
            if value is None or field.name in ("id", "text"):
                continue
            try:
                pa.array([value], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                return f"wrong type: field {field.name!r} must be {field.type}, got {json.dumps(value)[:60]}"
        return None


def _valid_utf8(table: pa.Table) -> bool:
    """pyarrow's JSON parser passes invalid UTF-8 through; check every string column (SIMD-fast)."""
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            try:
                col.validate(full=True)
            except pa.ArrowInvalid:
                return False
    return True


def _infer_schema(rows: list[dict[str, Any]]) -> pa.Schema:
    """Fields in order of first appearance, each typed by its first non-null value (id/text: string)."""
    types: dict[str, pa.DataType | None] = {"id": pa.string(), "text": pa.string()}
    for row in rows:
        for key, value in row.items():
            if types.get(key) is None and value is not None:
                try:
                    types[key] = pa.array([value]).type
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                    types[key] = pa.string()
            else:
                types.setdefault(key, None)
    return _settle(pa.schema([(k, t or pa.null()) for k, t in types.items()]))


def _settle(schema: pa.Schema) -> pa.Schema:
    """Fix an inferred schema: null-typed fields become strings, id/text strings."""
    fields = []
    for f in schema:
        typ = f.type
        if pa.types.is_null(typ) or f.name in ("id", "text"):
            typ = pa.string()
        fields.append(pa.field(f.name, typ))
    return pa.schema(fields)

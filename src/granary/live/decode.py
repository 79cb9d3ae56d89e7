"""Turning a micro-batch of raw message bodies into an Arrow table, vectorised, with bad messages set aside."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.json as pajson

PayloadFormat = Literal["json", "raw"]
POSITION_COLUMN = "_position"
QUARANTINE_SCHEMA = pa.schema([("position", pa.string()), ("reason", pa.string()), ("raw", pa.binary())])


@dataclass
class Decoded:
    """Rows made from a micro-batch, and the messages that could not become rows."""

    table: pa.Table | None
    quarantine: pa.Table | None

    @property
    def bad(self) -> int:
        return 0 if self.quarantine is None else self.quarantine.num_rows


def decode(payloads: list[bytes], positions: pa.Array, *, fmt: PayloadFormat,
           schema: pa.Schema | None) -> Decoded:
    """Decode message bodies into rows (plus a ``_position`` column).

    ``json`` bodies (one JSON object each) are parsed together by Arrow's multi-threaded JSON reader;
    only when that fails are they parsed one by one to find and quarantine the bad ones. With ``schema``
    the columns are read as its types (fields absent from it are ignored; a value that does not fit its
    type quarantines the message). ``raw`` keeps each body as a binary ``payload`` column.
    """
    if fmt == "raw":
        table = pa.table({"payload": pa.array(payloads, pa.binary())})
        return Decoded(_with_positions(table, positions), None)
    if fmt != "json":
        raise ValueError(f"payload format must be 'json' or 'raw', got {fmt!r}")
    table = _read_json(payloads, schema)
    if table is not None and table.num_rows == len(payloads):
        return Decoded(_with_positions(table, positions), None)
    return _decode_slow(payloads, positions, schema)


def _read_json(payloads: list[bytes], schema: pa.Schema | None) -> pa.Table | None:
    body = b"\n".join(payloads)
    if b"\n" in body and body.count(b"\n") != len(payloads) - 1:
        return None  # a body spans lines: Arrow would count rows wrongly
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore" if schema else "infer")
    try:
        return pajson.read_json(io.BytesIO(body), parse_options=options,
                                read_options=pajson.ReadOptions(block_size=max(1 << 20, len(body) + 1)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _decode_slow(payloads: list[bytes], positions: pa.Array, schema: pa.Schema | None) -> Decoded:
    good: list[int] = []
    bad_pos: list[str] = []
    reasons: list[str] = []
    raw: list[bytes] = []
    for i, body in enumerate(payloads):
        reason = _check_one(body, schema)
        if reason is None:
            good.append(i)
        else:
            bad_pos.append(positions[i].as_py())
            reasons.append(reason)
            raw.append(body)
    table = None
    if good:
        table = _read_json([payloads[i].replace(b"\n", b" ") for i in good], schema)
        if table is None or table.num_rows != len(good):  # types fit one by one but not together: keep as text
            raise ValueError("messages parse one by one but not as one batch; give an explicit --schema")
        table = _with_positions(table, positions.take(pa.array(good, pa.int64())))
    quarantine = pa.table({"position": bad_pos, "reason": reasons, "raw": pa.array(raw, pa.binary())},
                          schema=QUARANTINE_SCHEMA)
    return Decoded(table, quarantine)


def _check_one(body: bytes, schema: pa.Schema | None) -> str | None:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"not JSON: {exc}"
    if not isinstance(value, dict):
        return f"not a JSON object: got {type(value).__name__}"
    if schema is None:
        return None
    table = _read_json([body.replace(b"\n", b" ")], schema)
    if table is None:
        fields = ", ".join(f"{f.name}: {f.type}" for f in schema if f.name in value)
        return f"a value does not fit the schema ({fields})"
    return None


def _with_positions(table: pa.Table, positions: pa.Array) -> pa.Table:
    return table.append_column(POSITION_COLUMN, positions.cast(pa.string()))

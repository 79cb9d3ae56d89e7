"""Where malformed input records go: an immediate error, or the version's quarantine table."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import pyarrow as pa

from granary.errors import IngestError

OnError = Literal["fail", "quarantine"]

QUARANTINE_SCHEMA = pa.schema(
    [("source", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("raw", pa.binary())]
)
FLUSH_BYTES = 64 * 1024 * 1024


class BadRecordSink:
    """Collects bad records with their file, line and reason.

    With ``on_error="fail"`` the first bad record raises :class:`IngestError`; with
    ``"quarantine"`` records are kept (raw bytes included) and flushed as Parquet tables through
    ``flush`` so memory stays bounded. Nothing is ever dropped without a trace.
    """

    def __init__(self, on_error: OnError = "fail") -> None:
        if on_error not in ("fail", "quarantine"):
            raise ValueError(f"on_error must be 'fail' or 'quarantine', got {on_error!r}")
        self.on_error = on_error
        self.count = 0
        self.reasons: Counter[str] = Counter()
        self._rows: dict[str, list[object]] = {"source": [], "line": [], "reason": [], "raw": []}
        self._bytes = 0
        self.tables: list[pa.Table] = []
        self.damaged: list[str] = []

    def bad(self, source: str, line: int | None, reason: str, raw: bytes | None = None) -> None:
        """Report one bad record."""
        if self.on_error == "fail":
            raise IngestError(source, line, reason)
        self.count += 1
        self.reasons[reason.split(":")[0].split(" at ")[0]] += 1
        self._rows["source"].append(source)
        self._rows["line"].append(line)
        self._rows["reason"].append(reason)
        self._rows["raw"].append(raw)
        self._bytes += len(raw or b"") + len(reason) + 64
        if self._bytes >= FLUSH_BYTES:
            self.flush()

    def file_problem(self, source: str, line: int | None, reason: str, raw: bytes | None = None) -> None:
        """Report a file that could not be read whole (truncated, corrupt, unreadable): a bad record that is
        also listed in ``damaged`` for the ingest summary."""
        self.damaged.append(f"{source}: {reason}")
        self.bad(source, line, reason, raw)

    def flush(self) -> None:
        """Turn buffered records into a table (appended to ``tables``)."""
        if not self._rows["source"]:
            return
        self.tables.append(pa.table(self._rows, schema=QUARANTINE_SCHEMA))
        self._rows = {k: [] for k in self._rows}
        self._bytes = 0

"""A run's work directory: intermediate tables, collected keys, decisions and completion records."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class RunDir:
    """Paths inside `root` (one directory per run id) and atomic JSON records.

    Layout: `seg<k>/out-<unit>.parquet` (segment output feeding segment k+1), `seg<k>/collect-<unit>.npz`
    (keys for the global step ending segment k), `seg<k>/global/` (its decision files), `seg<k>/rejected-<unit>
    .parquet`, `seg<k>/quarantine-<unit>.parquet` and `seg<k>/done-<unit>.json` (written last: the unit is done).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def seg(self, k: int) -> Path:
        """The directory of segment k (created)."""
        p = self.root / f"seg{k}"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def out(self, k: int, unit: int) -> Path:
        """Segment k's output table for `unit`."""
        return self.seg(k) / f"out-{unit:06d}.parquet"

    def collect(self, k: int, unit: int) -> Path:
        """Keys collected for the global step that ends segment k."""
        return self.seg(k) / f"collect-{unit:06d}.npz"

    def global_dir(self, k: int) -> Path:
        """Decision directory of the global step ending segment k."""
        p = self.seg(k) / "global"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def decision(self, k: int, unit: int) -> Path:
        """The decision file for `unit` of the global step ending segment k."""
        return self.global_dir(k) / f"decision-{unit:06d}.npz"

    def rejected(self, k: int, unit: int) -> Path:
        """Rejected rows of `unit` in segment k."""
        return self.seg(k) / f"rejected-{unit:06d}.parquet"

    def quarantine(self, unit: int) -> Path:
        """Quarantined input records of `unit` (segment 0 only)."""
        return self.seg(0) / f"quarantine-{unit:06d}.parquet"

    def done(self, k: int, unit: int) -> Path:
        """The completion record of `unit` in segment k."""
        return self.seg(k) / f"done-{unit:06d}.json"

    def decided(self, k: int) -> Path:
        """The completion record of the global phase after segment k."""
        return self.global_dir(k) / "decided.json"

    def read_json(self, path: Path) -> dict[str, Any] | None:
        """A record, or None if it was never (completely) written."""
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_json(self, path: Path, record: dict[str, Any]) -> None:
        """Write a record atomically (tmp file, fsync, rename)."""
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, default=str)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

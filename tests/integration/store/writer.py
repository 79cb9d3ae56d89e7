"""Helper process for the crash and concurrency tests: commits in a loop and reports each outcome."""

from __future__ import annotations

import json
import sys

import pyarrow as pa

from granary.config import Settings
from granary.errors import ConflictError
from granary.store import open_store


def main() -> None:
    home, catalog_url, dataset, tag, commits, rows = sys.argv[1:7]
    settings = Settings.from_env(home=home, catalog_url=catalog_url, shard_size_bytes=8192, row_group_bytes=4096)
    store = open_store(settings)
    for i in range(int(commits)):
        ids = [f"{tag}-c{i}-r{j}" for j in range(int(rows))]
        table = pa.table({"id": ids, "text": [f"row {x} " * 20 for x in ids]})
        try:
            with store.transaction(dataset) as txn:
                txn.write(table)
                version = txn.commit(message=f"{tag} commit {i}")
            print(json.dumps({"commit": i, "outcome": "landed", "version": version.id}), flush=True)
        except ConflictError:
            print(json.dumps({"commit": i, "outcome": "conflict"}), flush=True)


if __name__ == "__main__":
    main()

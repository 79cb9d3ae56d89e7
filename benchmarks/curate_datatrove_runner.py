"""Runs the datatrove side of benchmarks/curate_bench.py (inside benchmarks/.venv-datatrove).

Usage: python curate_datatrove_runner.py INPUT_DIR WORK_DIR WORKERS
Prints one JSON object: seconds per stage, input/intermediate sizes, and the ids datatrove removed as near
duplicates. The steps mirror Granary's benchmark pipeline: NFC + whitespace cleaning, Gopher repetition,
Gopher quality, C4 (document rules, no line filter), FineWeb, exact dedup (3 stages), MinHash (4 stages), PII.
"""

from __future__ import annotations

import json
import re
import sys
import time
import unicodedata
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

_WS = re.compile(r"[ \t]+")
_NL = re.compile(r"\n{3,}")


class CleanFormatter(BaseFormatter):
    """What a datatrove user writes for NFC + whitespace normalisation."""

    name = "clean"

    def format(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text).replace("\r\n", "\n")
        return _NL.sub("\n\n", _WS.sub(" ", text)).strip()


def main() -> None:
    inp, work, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    tasks = len(list(inp.glob("*.jsonl")))
    stages: dict[str, float] = {}
    mh = MinhashConfig()

    def run(name: str, pipeline: list, n_tasks: int) -> None:
        t0 = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=min(workers, n_tasks),
                              logging_dir=str(work / "logs" / name), skip_completed=False).run()
        stages[name] = time.perf_counter() - t0

    exact_cfg = ExactDedupConfig(content_getter=lambda d: d.text)
    run("filters", [JsonlReader(str(inp)), CleanFormatter(), GopherRepetitionFilter(), GopherQualityFilter(),
                    C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter(),
                    JsonlWriter(str(work / "s1"))], tasks)
    run("exact_signature", [JsonlReader(str(work / "s1")), ExactDedupSignature(str(work / "esig"), exact_cfg)],
        tasks)
    run("exact_find", [ExactFindDedups(str(work / "esig"), str(work / "edup"), exact_cfg)], 1)
    run("exact_filter", [JsonlReader(str(work / "s1")), ExactDedupFilter(str(work / "edup"), exact_cfg),
                         JsonlWriter(str(work / "s2"))], tasks)
    run("minhash_signature", [JsonlReader(str(work / "s2")), MinhashDedupSignature(str(work / "msig"), mh)],
        tasks)
    run("minhash_buckets", [MinhashDedupBuckets(str(work / "msig"), str(work / "mbuck"), config=mh)],
        mh.num_buckets)
    run("minhash_cluster", [MinhashDedupCluster(str(work / "mbuck"), str(work / "mrem"), config=mh)], 1)
    run("minhash_filter_pii", [JsonlReader(str(work / "s2")), MinhashDedupFilter(
        str(work / "mrem"), exclusion_writer=JsonlWriter(str(work / "removed"))), PIIFormatter(),
        JsonlWriter(str(work / "out"))], tasks)
    s1, s2, removed = _rows(work / "s1"), _rows(work / "s2"), _rows(work / "removed")
    print(json.dumps({"stages": stages, "near_removed": [r["id"] for r in removed],
                      "exact_removed": sorted({r["id"] for r in s1} - {r["id"] for r in s2}),
                      "minhash_input_bytes": sum(len(r["text"].encode()) for r in s2)}))


def _rows(folder: Path) -> list[dict]:
    import gzip

    out: list[dict] = []
    for f in sorted(folder.glob("*.jsonl*")):
        with gzip.open(f, "rt") if f.suffix == ".gz" else open(f) as fh:
            out += [json.loads(line) for line in fh]
    return out


if __name__ == "__main__":
    main()

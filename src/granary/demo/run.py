"""`granary demo`: generate the synthetic corpus, ingest it, and run each subsystem's demo step."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from granary.demo.corpus import generate, write_jsonl
from granary.store import Store
from granary.store.ingest import ingest

log = logging.getLogger(__name__)

DATASET = "demo"


@dataclass(frozen=True)
class Step:
    """One demo step: a title and a function of (store, console) returning a summary dict."""

    title: str
    run: Callable[[Store, Console], dict[str, Any]]


def ingest_step(store: Store, console: Console, *, n_docs: int = 3000) -> dict[str, Any]:
    """Generate the corpus, write it as JSONL (with a few broken lines) and ingest it with quarantine."""
    docs, truth = generate(n_docs)
    path = write_jsonl(store.settings.home / "demo" / "corpus.jsonl", docs, truth)
    report = ingest(store, [path], DATASET, on_error="quarantine", mode="overwrite",
                    message=f"demo corpus: {n_docs} synthetic documents",
                    metadata={"source": "granary synthetic demo corpus", "license": "CC0-1.0"})
    version = report.version
    assert version is not None
    tag = f"demo-{version.short_id}"
    if not any(r.name == tag for r in store.refs(DATASET, "tag")):
        store.tag(DATASET, tag, ref=version.ref)
    check = store.verify(version.ref)
    return {
        "version": version.ref,
        "documents": report.records,
        "quarantined": report.quarantined,
        "planted": {"exact_dups": len(truth.exact_dups), "near_dups": len(truth.near_dups),
                    "pii_docs": len(truth.pii), "low_quality": len(truth.low_quality),
                    "malformed_lines": len(truth.malformed_lines)},
        "verify": "ok" if check.ok else f"{len(check.problems)} problems",
        "tag": f"{DATASET}@{tag}",
    }


def curate_step(store: Store, console: Console) -> dict[str, Any]:
    """Clean, filter, deduplicate and redact the corpus into `demo-curated`, with an HTML report."""
    from granary.curate import demo as curate_demo

    return curate_demo.run(store, console)


def stream_step(store: Store, console: Console) -> dict[str, Any]:
    """Train a tokenizer, tokenize the curated corpus into `demo-tokens` and stream a few batches."""
    from granary.stream import demo as stream_demo

    return stream_demo.run(store, console)


def train_step(store: Store, console: Console) -> dict[str, Any]:
    """Train the reference GPT for a few steps on `demo-tokens`, checkpoints in the store (needs torch)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "PyTorch is not installed (pip install 'granary[torch]')"}
    from granary.train import demo as train_demo

    return train_demo.run(store, console)


def sched_step(store: Store, console: Console) -> dict[str, Any]:
    """Submit the demo's data jobs (verify -> stream -> report) as a DAG through the scheduler's local executor."""
    import sys

    from granary.sched import demo as sched_demo

    cli = f"{sys.executable} -m granary.cli.main"
    dag = [
        ("verify-curated", f"{cli} verify demo-curated", ()),
        ("peek-tokens", f"{cli} peek demo-tokens --seq-len 32 -n 2", ("verify-curated",)),
        ("report-curated", f"{cli} report demo-curated --json", ("peek-tokens",)),
    ]
    out = sched_demo.run(store.settings, console, commands=dag)
    out["jobs"] = {j["name"]: f"{j['state']} ({j['attempts']} attempt)" for j in out["jobs"]}
    out["seconds"] = round(out["seconds"], 2)
    return out


def watch_step(store: Store, console: Console) -> dict[str, Any]:
    """Node readings, the detectors with an injected GPU fault, and the energy of the scheduler's jobs."""
    from granary.monitor import demo as watch_demo

    return watch_demo.run(store.settings, console)


def secure_step(store: Store, console: Console) -> dict[str, Any]:
    """Purpose enforcement, a differentially private statistic and the tamper-evident audit log."""
    from granary.secure import demo as secure_demo

    return secure_demo.run(store, console)


def steps() -> list[Step]:
    """The demo's steps, in order."""
    return [
        Step("Ingest a synthetic corpus into the store", ingest_step),
        Step("Curate it: clean, quality-filter, deduplicate, redact PII, report", curate_step),
        Step("Tokenize it and stream training batches", stream_step),
        Step("Train the reference GPT on them for a few steps (CPU, checkpoints in the store)", train_step),
        Step("Run the data jobs through the scheduler (a DAG on the local executor)", sched_step),
        Step("Watch it: node and GPU readings, alerts, energy per job", watch_step),
        Step("Govern it: license and purposes, a private statistic, the audit chain", secure_step),
    ]


def _shown(value: Any) -> Any:
    """A summary value as printed: floats rounded to two decimals, also inside lists and dicts."""
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v) for v in value]
    return value


def run(store: Store, console: Console) -> list[tuple[str, dict[str, Any], float]]:
    """Run every step, printing a line per step; returns (title, summary, seconds) per step."""
    results = []
    for i, step in enumerate(steps(), 1):
        console.print(f"[bold cyan]{i}. {step.title}[/]")
        start = time.perf_counter()
        summary = step.run(store, console)
        took = time.perf_counter() - start
        for key, value in summary.items():
            console.print(f"   {key}: {_shown(value)}", highlight=False)
        results.append((step.title, summary, took))
    return results

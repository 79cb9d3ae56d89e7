"""The kill -9 scenario shared by every source: a producer writes numbered messages while the ingester is
killed at random moments and restarted; at the end the dataset holds every number exactly once."""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from granary.live import read_offset
from granary.store import open_store
from tests.integration.live.conftest import start_ingester, wait_for


def kill_and_resume(*, source: str, source_id: Callable[[], str], produce: Callable[[int, int], None],
                    total: int, kills: int, tmp_path: Path, seed: int = 0, chunk: int = 500) -> None:
    """Run the scenario; ``produce(start, stop)`` writes messages ``{"n": i}`` for i in [start, stop)."""
    rng = random.Random(seed)
    log = tmp_path / "ingester.log"
    dataset = "events"
    store = open_store()
    done = threading.Event()
    failure: list[BaseException] = []

    def producer() -> None:
        try:
            for start in range(0, total, chunk):
                produce(start, min(total, start + chunk))
                done.wait(rng.uniform(0.0, 0.02))
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)
        finally:
            done.set()

    def committed() -> int:
        off = read_offset(store.catalog, source_id(), dataset, "main") if _exists(store, dataset) else None
        return 0 if off is None else off.records

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        for _ in range(kills):
            before = committed()
            if before >= total:
                break  # a fast machine committed everything already: no later kill can land mid-stream
            proc = start_ingester(source, dataset, "--every", "300ms", "--batch-records", "1500", log=log)
            try:
                wait_for(lambda b=before, p=proc: committed() > b or p.poll() is not None, 90,  # type: ignore[misc]
                         "a commit")
                assert proc.poll() is None, f"ingester exited early:\n{log.read_text()}"
                done.wait(rng.uniform(0.0, 0.6))  # a random moment: reading, writing shards, committing, acking
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        thread.join(120)
        assert not failure, failure
        # the rest, counted by the offsets table; --idle-stop only bounds a hang if messages went missing
        remaining = total - committed()
        if remaining > 0:
            proc = start_ingester(source, dataset, "--every", "300ms", "--max-records", str(remaining),
                                  "--idle-stop", "30s", log=log)
            proc.communicate(timeout=180)
            assert proc.returncode == 0, f"ingester failed:\n{log.read_text()}"
    finally:
        done.set()
    numbers = store.read_table(dataset, columns=["n"]).column("n").to_numpy()
    counts = np.bincount(numbers, minlength=total)
    missing, duplicated = np.flatnonzero(counts == 0)[:10], np.flatnonzero(counts > 1)[:10]
    assert len(numbers) == total, f"{len(numbers)} rows, {total} sent; missing {missing}, duplicated {duplicated}"
    assert (counts == 1).all(), f"missing {missing}, duplicated {duplicated}"
    assert committed() == total


def _exists(store, dataset: str) -> bool:  # type: ignore[no-untyped-def]
    return any(d.name == dataset for d in store.datasets())

"""The state worker processes share: placements and per-worker load, through a file mapped by two processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from granary.serve.balancers.shared import SharedRouteState, state_bytes


def test_placements_are_a_direct_mapped_table() -> None:
    s = SharedRouteState.in_memory()
    assert s.placement(12345) is None
    s.place(12345, 77, 40)
    assert s.placement(12345) == (77, 40)
    s.place(12345 + s.placement_slots, 78, 3)  # the same slot: the newer placement wins
    assert s.placement(12345) is None and s.placement(12345 + s.placement_slots) == (78, 3)
    assert s.placement(0) is None


def test_each_worker_writes_its_row_and_reads_the_others() -> None:
    buf = bytearray(state_bytes(3))
    rows = [SharedRouteState(buf, worker=w, num_workers=3) for w in range(3)]
    rows[0].add_load(5, 10.0)
    rows[1].add_load(5, 2.5)
    rows[2].add_load(6, 1.0)
    assert rows[2].others_load(5) == 12.5 and rows[0].others_load(5) == 2.5 and rows[0].others_load(6) == 1.0
    rows[1].add_load(5, -100.0)  # never below zero
    assert rows[0].others_load(5) == 0.0
    SharedRouteState(buf, worker=0, num_workers=3)  # a restarted worker starts with nothing in flight
    assert rows[1].others_load(5) == 0.0
    with pytest.raises(ValueError, match="worker"):
        SharedRouteState(buf, worker=3, num_workers=3)
    with pytest.raises(ValueError, match="bytes"):
        SharedRouteState(bytearray(10))


def _child(path: str) -> None:
    s = SharedRouteState.open(path, worker=1, num_workers=2)
    s.add_load(9, 4.0)
    s.place(4242, 9, 17)
    s.close()


def test_two_processes_share_a_mapped_file(tmp_path: Path) -> None:
    path = tmp_path / "route-chat.state"
    mine = SharedRouteState.open(path, worker=0, num_workers=2)
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(str(path),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert mine.others_load(9) == 4.0 and mine.placement(4242) == (9, 17)
    mine.close()

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
    rows[1].add_load(5, 0.0, 3)
    assert rows[0].others(5) == (2.5, 3.0)
    rows[1].add_load(5, -100.0, -9)  # never below zero
    assert rows[0].others(5) == (0.0, 0.0)
    SharedRouteState(buf, worker=0, num_workers=3)  # a restarted worker starts with nothing in flight
    assert rows[1].others_load(5) == 0.0
    with pytest.raises(ValueError, match="worker"):
        SharedRouteState(buf, worker=3, num_workers=3)
    with pytest.raises(ValueError, match="bytes"):
        SharedRouteState(bytearray(10))


def test_block_index_keeps_a_bit_per_backend() -> None:
    s = SharedRouteState.in_memory()
    a, b = s.bit(111), s.bit(222)
    assert a != b and a and b and s.bit(111) == a  # stable
    s.hold([7, 8, 9], a)
    s.hold([7, 8], b)
    assert s.holders(7) == a | b and s.holders(9) == a and s.holders(10) == 0
    s.hold([7 + s.block_slots], b)  # the same entry: the newer block wins
    assert s.holders(7) == 0 and s.holders(7 + s.block_slots) == b
    s.release(111)
    assert s.holders(9) == 0 and s.holders(8) == b
    assert s.bit(333) == a  # the freed slot is reused
    full = SharedRouteState.in_memory()
    assert all(full.bit(1000 + i) for i in range(64)) and full.bit(5000) == 0  # 64 backends at most


def _child(path: str) -> None:
    s = SharedRouteState.open(path, worker=1, num_workers=2)
    s.add_load(9, 4.0, 1)
    s.place(4242, 9, 17)
    s.hold([31, 32], s.bit(9))
    s.close()


def test_two_processes_share_a_mapped_file(tmp_path: Path) -> None:
    path = tmp_path / "route-chat.state"
    mine = SharedRouteState.open(path, worker=0, num_workers=2)
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(str(path),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert mine.others(9) == (4.0, 1.0) and mine.placement(4242) == (9, 17)
    assert mine.holders(31) == mine.holders(32) == mine.bit(9) != 0  # the child's slot, seen by this process
    mine.close()

"""ordered_map: results in order from reader threads (and the consumer itself with ``caller_runs``), errors at
their item's turn, bounded look-ahead."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.stream.prefetch import ordered_map


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=60), st.integers(1, 3), st.integers(1, 4), st.booleans())
def test_results_come_in_item_order(items: list[int], threads: int, depth: int, caller_runs: bool) -> None:
    def slow_square(x: int) -> int:
        time.sleep((x % 3) * 0.0005)  # uneven work, so threads finish out of order
        return x * x

    out = list(ordered_map(slow_square, items, num_threads=threads, depth=depth, caller_runs=caller_runs))
    assert out == [x * x for x in items]


def test_the_waiting_consumer_computes_items_itself() -> None:
    workers: set[str] = set()

    def who(x: int) -> int:
        workers.add(threading.current_thread().name)
        time.sleep(0.002)  # releases the GIL, as the gather kernels do
        return x

    assert list(ordered_map(who, range(40), num_threads=1, depth=4, caller_runs=True)) == list(range(40))
    assert threading.current_thread().name in workers and "granary-reader-0" in workers
    workers.clear()
    assert list(ordered_map(who, range(10), num_threads=1, depth=4)) == list(range(10))
    assert workers == {"granary-reader-0"}  # without caller_runs the consumer only waits


@pytest.mark.parametrize("caller_runs", [False, True])
def test_an_error_is_raised_at_its_items_turn(caller_runs: bool) -> None:
    def fail_at_5(x: int) -> int:
        if x == 5:
            raise ValueError("item 5 is bad")
        return x

    got: list[int] = []
    with pytest.raises(ValueError, match="item 5 is bad"):
        for x in ordered_map(fail_at_5, range(20), num_threads=2, depth=3, caller_runs=caller_runs):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("caller_runs", [False, True])
def test_a_failing_item_source_is_raised_not_hung(caller_runs: bool) -> None:
    def items() -> Iterator[int]:
        yield from range(3)
        raise OSError("shard list unreadable")

    got: list[int] = []
    with pytest.raises(OSError, match="shard list unreadable"):
        for x in ordered_map(lambda x: x, items(), num_threads=2, depth=2, caller_runs=caller_runs):
            got.append(x)
    assert got == [0, 1, 2]


def test_look_ahead_is_bounded() -> None:
    started: list[int] = []

    def record(x: int) -> int:
        started.append(x)
        return x

    it = ordered_map(record, range(1000), num_threads=2, depth=3)
    assert next(it) == 0
    time.sleep(0.2)  # give the readers every chance to run ahead
    assert len(started) <= 1 + 3 + 2  # the one consumed, `depth` waiting, one in the hands of each reader
    it.close()

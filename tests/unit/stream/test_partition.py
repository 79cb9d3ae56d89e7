"""Partitioning: every position of a pass lands on exactly one (rank, worker), and ranks are balanced."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.stream.partition import Topology, pass_steps, rank_slice, worker_steps


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 500), batch=st.integers(1, 9), world=st.integers(1, 5), workers=st.integers(1, 4),
       position=st.integers(0, 2000))
def test_each_position_of_a_pass_is_delivered_exactly_once(n: int, batch: int, world: int, workers: int,
                                                           position: int) -> None:
    steps = pass_steps(position, n, batch * world)
    delivered: list[int] = []
    per_rank = []
    for rank in range(world):
        count = 0
        for worker in range(workers):
            topo = Topology(rank=rank, world_size=world, worker_id=worker, num_workers=workers)
            for step in worker_steps(steps, worker, workers):
                lo, hi = rank_slice(position, step, batch_size=batch, topology=topo)
                delivered.extend(range(lo, hi))
                count += 1
        per_rank.append(count)
    assert sorted(delivered) == list(range(position, position + steps * batch * world))
    assert len(set(per_rank)) == 1  # balance: every rank yields the same number of batches
    epoch_end = (position // n + 1) * n
    assert position + (steps - 1) * batch * world < epoch_end <= position + steps * batch * world


def test_pass_steps_and_topology_validation() -> None:
    assert pass_steps(0, 10, 4) == 3
    assert pass_steps(12, 10, 4) == 2  # positions 12..19 of epoch 1
    with pytest.raises(ValueError, match="rank must lie"):
        Topology(rank=2, world_size=2)
    with pytest.raises(ValueError, match="worker_id"):
        Topology(worker_id=1, num_workers=1)
    with pytest.raises(ValueError, match="bad pass"):
        pass_steps(0, 0, 4)

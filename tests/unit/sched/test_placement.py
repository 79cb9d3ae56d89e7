"""Placement strategies: bin-packing, spread, topology, labels, locality; the cluster's free index."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from granary.sched.cluster import Cluster
from granary.sched.errors import UnknownNameError
from granary.sched.model import JobSpec, NodeSpec
from granary.sched.placement import PLACEMENTS, get_placement


def _cluster(frees: list[int], gpus: int = 8, racks: int = 2) -> Cluster:
    c = Cluster()
    for i, free in enumerate(frees):
        node = c.add(NodeSpec(name=f"n{i}", gpus=gpus, labels={"rack": f"r{i % racks}", "weight": str(i)}), 0.0)
        c.allocate(node, JobSpec(name="x", gpus_per_replica=gpus - free, cpus_per_replica=0), "busy") if free < gpus \
            else None
    return c


def _spec(g: int, replicas: int = 1, **kw: object) -> JobSpec:
    return JobSpec(name="j", gpus_per_replica=g, replicas=replicas, cpus_per_replica=0, **kw)  # type: ignore[arg-type]


def test_binpack_picks_the_fullest_node_that_fits() -> None:
    c = _cluster([8, 3, 2, 5])
    assert get_placement("binpack")(c, _spec(3)) == [1]
    assert get_placement("binpack")(c, _spec(6)) == [0]
    assert get_placement("binpack")(c, _spec(9)) is None


def test_spread_picks_the_emptiest_nodes() -> None:
    c = _cluster([8, 3, 2, 5])
    assert get_placement("spread")(c, _spec(1, replicas=2)) == [0, 3]


def test_weighted_prefers_capable_nodes() -> None:
    c = _cluster([8, 8, 8])
    assert get_placement("weighted")(c, _spec(1)) == [2]


def test_topology_keeps_a_gang_in_one_rack() -> None:
    c = _cluster([8, 4, 8, 4, 8, 8], racks=3)  # racks: r0 = n0,n3 ; r1 = n1,n4 ; r2 = n2,n5
    nodes = get_placement("topology")(c, _spec(4, replicas=4))
    assert nodes is not None and {c.nodes[i].spec.labels["rack"] for i in nodes} == {"r2"}


def test_labels_and_locality_are_honoured() -> None:
    c = _cluster([8, 8, 8])
    c.nodes[1].spec.labels["gpu"] = "h100"
    assert get_placement("binpack")(c, _spec(1, node_selector={"gpu": "h100"})) == [1]
    c.nodes[2].cached = frozenset({"web"})
    assert get_placement("spread")(c, _spec(2, data_hint="web")) == [2]
    with pytest.raises(UnknownNameError):
        get_placement("random")


@pytest.mark.parametrize("name", sorted(PLACEMENTS))
@settings(max_examples=30, deadline=None)
@given(frees=st_.lists(st_.integers(0, 8), min_size=1, max_size=6), g=st_.integers(1, 8),
       replicas=st_.integers(1, 4))
def test_placement_matches_fit_and_never_overcommits(name: str, frees: list[int], g: int, replicas: int) -> None:
    c = _cluster(frees)
    spec = _spec(g, replicas)
    nodes = get_placement(name)(c, spec)
    assert (nodes is not None) == c.fits(spec)
    if nodes is not None:
        assert len(nodes) == replicas
        for i in set(nodes):
            assert nodes.count(i) * g <= c.nodes[i].free_gpus

"""Placement strategies: which nodes a job's replicas go to (a registry keyed by short names)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from granary.sched.cluster import Cluster
from granary.sched.errors import UnknownNameError
from granary.sched.model import JobSpec, Node

# A strategy returns one node index per replica, or None when the job does not fit now.
Strategy = Callable[[Cluster, JobSpec], list[int] | None]
PLACEMENTS: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    """Register a placement strategy under a short name."""

    def wrap(fn: Strategy) -> Strategy:
        PLACEMENTS[name] = fn
        return fn

    return wrap


def get_placement(name: str) -> Strategy:
    """The strategy called ``name`` (wrapped with the data-locality preference)."""
    if name not in PLACEMENTS:
        raise UnknownNameError("placement", name, list(PLACEMENTS))
    strategy = PLACEMENTS[name]

    def place(cluster: Cluster, spec: JobSpec) -> list[int] | None:
        if spec.data_hint:
            local = _locality(cluster, spec)
            if local is not None:
                return local
        return strategy(cluster, spec)

    return place


def _fill(cluster: Cluster, spec: JobSpec, order: list[Node]) -> list[int] | None:
    """Assign replicas to nodes in ``order``, as many per node as fit (fewest nodes first in order)."""
    out: list[int] = []
    for node in order:
        take = min(cluster.replicas_on(node, spec), spec.replicas - len(out))
        out.extend([node.index] * take)
        if len(out) == spec.replicas:
            return out
    return None


def _locality(cluster: Cluster, spec: JobSpec) -> list[int] | None:
    """Place entirely on nodes whose cache holds the job's dataset, if they have room."""
    hint = spec.data_hint
    nodes = [n for n in cluster.up_nodes() if hint in n.cached]
    if not nodes:
        return None
    nodes.sort(key=lambda n: (n.free_gpus, n.index))
    return _fill(cluster, spec, nodes)


@register("binpack")
def binpack(cluster: Cluster, spec: JobSpec) -> list[int] | None:
    """Best fit: each replica goes to the node with the fewest free GPUs that still fits it."""
    if cluster.gpu_only(spec) and spec.replicas == 1:
        r = spec.gpus_per_replica
        for f in range(r, len(cluster.by_free)):
            bucket = cluster.by_free[f]
            if bucket:
                return [next(iter(bucket))]
        return None
    if not cluster.fits(spec):
        return None
    nodes = sorted((n for n in cluster.up_nodes() if cluster.replicas_on(n, spec)),
                   key=lambda n: (n.free_gpus, n.free_cpus, n.index))
    return _fill(cluster, spec, nodes)


@register("spread")
def spread(cluster: Cluster, spec: JobSpec) -> list[int] | None:
    """Worst fit: replicas go to the emptiest nodes, one per node while possible."""
    nodes = sorted((n for n in cluster.up_nodes() if cluster.replicas_on(n, spec)),
                   key=lambda n: (-n.free_gpus, -n.free_cpus, n.index))
    out = [n.index for n in nodes[: spec.replicas]]
    if len(out) == spec.replicas:
        return out
    return _fill(cluster, spec, nodes)


@register("least-loaded")
def least_loaded(cluster: Cluster, spec: JobSpec) -> list[int] | None:
    """Nodes with the lowest measured utilization (from agent heartbeats) first."""
    nodes = sorted((n for n in cluster.up_nodes() if cluster.replicas_on(n, spec)),
                   key=lambda n: (n.utilization, -n.free_gpus, n.index))
    return _fill(cluster, spec, nodes)


@register("weighted")
def weighted(cluster: Cluster, spec: JobSpec) -> list[int] | None:
    """Most capable nodes first (label ``weight``, default 1), best fit among equals."""
    nodes = sorted((n for n in cluster.up_nodes() if cluster.replicas_on(n, spec)),
                   key=lambda n: (-float(n.spec.labels.get("weight", 1)), n.free_gpus, n.index))
    return _fill(cluster, spec, nodes)


@register("topology")
def topology(cluster: Cluster, spec: JobSpec) -> list[int] | None:
    """Keep a gang on as few racks and nodes as possible; single replicas are bin-packed.

    Racks come from the node label ``rack``. The rack that holds the whole gang with the least room to
    spare wins; otherwise racks with the most room are combined. Inside racks, nodes with the most room
    come first so the gang spans few nodes.
    """
    if spec.replicas == 1:
        return binpack(cluster, spec)
    if cluster.gpu_only(spec) and not cluster.fits(spec):
        return None
    room: dict[str, list[tuple[int, Node]]] = defaultdict(list)
    if cluster.gpu_only(spec):  # only nodes with enough free GPUs can matter
        candidates = [cluster.nodes[i] for f in range(spec.gpus_per_replica, len(cluster.by_free))
                      for i in cluster.by_free[f]]
    else:
        candidates = list(cluster.up_nodes())
    for node in candidates:
        n = cluster.replicas_on(node, spec)
        if n:
            room[node.spec.labels.get("rack", "")].append((n, node))
    racks = sorted(room.items(), key=lambda kv: (-sum(n for n, _ in kv[1]), kv[0]))
    whole = [r for r in racks if sum(n for n, _ in r[1]) >= spec.replicas]
    chosen = [min(whole, key=lambda kv: (sum(n for n, _ in kv[1]), kv[0]))] if whole else racks
    order = [node for _, members in chosen
             for _, node in sorted(members, key=lambda t: (-t[0], t[1].index))]
    return _fill(cluster, spec, order)

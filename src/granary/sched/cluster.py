"""Node bookkeeping for the scheduler: free resources, a free-GPU index for O(1) fit checks, allocation."""

from __future__ import annotations

from collections.abc import Iterator

from granary.sched.errors import NodeNotFoundError
from granary.sched.model import JobSpec, Node, NodeSpec


class Cluster:
    """The nodes and their free resources.

    Up nodes are indexed by their number of free GPUs (``by_free[f]`` is the set of node indices with
    ``f`` free GPUs), so that "does a GPU-only shape fit" and "best-fit node for r GPUs" cost O(max GPUs
    per node) instead of a scan over every node.
    """

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.by_name: dict[str, int] = {}
        self.by_free: list[set[int]] = [set()]
        self.free_gpus = 0
        self.total_gpus = 0
        self.remote = False  # some node belongs to a remote executor (Slurm, Ray, Kubernetes)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        try:
            return self.nodes[self.by_name[name]]
        except KeyError:
            raise NodeNotFoundError(name) from None

    def add(self, spec: NodeSpec, now: float) -> Node:
        """Register a node (or re-register it with a new spec when it is idle); it comes up."""
        if spec.name in self.by_name:
            node = self.nodes[self.by_name[spec.name]]
            if not node.jobs and node.spec != spec:
                self._unindex(node)
                node.spec = spec
                node.free_gpu_ids = list(range(spec.gpus))
                node.free_cpus, node.free_memory = spec.cpus, spec.memory_bytes
                node.status = "down"
            node.last_heartbeat = now
            self.set_status(node, "up")
            return node
        self.remote = self.remote or spec.labels.get("executor", "local") != "local"
        node = Node(index=len(self.nodes), spec=spec, status="down", free_gpu_ids=list(range(spec.gpus)),
                    free_cpus=spec.cpus, free_memory=spec.memory_bytes, last_heartbeat=now)
        self.nodes.append(node)
        self.by_name[spec.name] = node.index
        self.set_status(node, "up")
        return node

    def set_status(self, node: Node, status: str) -> None:
        """Change a node's status, keeping the free index (up nodes only) in step."""
        if node.status == status:
            return
        if node.status == "up":
            self._unindex(node)
        node.status = status
        if status == "up":
            self._index(node)

    def _index(self, node: Node) -> None:
        f = node.free_gpus
        while len(self.by_free) <= max(f, node.spec.gpus):
            self.by_free.append(set())
        self.by_free[f].add(node.index)
        self.free_gpus += f
        self.total_gpus += node.spec.gpus

    def _unindex(self, node: Node) -> None:
        if node.status != "up":
            return
        self.by_free[node.free_gpus].discard(node.index)
        self.free_gpus -= node.free_gpus
        self.total_gpus -= node.spec.gpus

    def allocate(self, node: Node, spec: JobSpec, job_id: str) -> tuple[int, ...]:
        """Take one replica's resources on ``node``; returns the GPU ids."""
        up = node.status == "up"
        if up:
            self.by_free[node.free_gpus].discard(node.index)
        g = spec.gpus_per_replica
        if g > 1:
            node.free_gpu_ids.sort()
        ids = tuple(node.free_gpu_ids[:g])
        del node.free_gpu_ids[:g]
        node.free_cpus -= spec.cpus_per_replica
        node.free_memory -= spec.memory_bytes_per_replica
        node.jobs.add(job_id)
        if up:
            self.by_free[node.free_gpus].add(node.index)
            self.free_gpus -= g
        return ids

    def allocate_ids(self, node: Node, spec: JobSpec, gpu_ids: tuple[int, ...], job_id: str) -> tuple[int, ...]:
        """Take one replica's resources with these exact GPU ids (recovery of a running job)."""
        up = node.status == "up"
        if up:
            self.by_free[node.free_gpus].discard(node.index)
        taken = set(gpu_ids)
        node.free_gpu_ids = [g for g in node.free_gpu_ids if g not in taken]
        node.free_cpus -= spec.cpus_per_replica
        node.free_memory -= spec.memory_bytes_per_replica
        node.jobs.add(job_id)
        if up:
            self.by_free[node.free_gpus].add(node.index)
            self.free_gpus -= len(gpu_ids)
        return tuple(gpu_ids)

    def release(self, node: Node, spec: JobSpec, gpu_ids: tuple[int, ...], job_id: str) -> None:
        """Give one replica's resources back."""
        up = node.status == "up"
        if up:
            self.by_free[node.free_gpus].discard(node.index)
        node.free_gpu_ids.extend(gpu_ids)
        node.free_cpus += spec.cpus_per_replica
        node.free_memory += spec.memory_bytes_per_replica
        node.jobs.discard(job_id)
        if up:
            self.by_free[node.free_gpus].add(node.index)
            self.free_gpus += len(gpu_ids)

    def replicas_on(self, node: Node, spec: JobSpec) -> int:
        """How many replicas of ``spec`` fit on ``node`` now (0 if it is not up or lacks a label)."""
        if node.status != "up" or node.spec.labels.get("executor", "local") != spec.executor:
            return 0
        for k, v in spec.node_selector.items():
            if node.spec.labels.get(k) != v:
                return 0
        n = spec.replicas
        if spec.gpus_per_replica:
            n = min(n, node.free_gpus // spec.gpus_per_replica)
        if spec.cpus_per_replica:
            n = min(n, int(node.free_cpus // spec.cpus_per_replica + 1e-9))
        if spec.memory_bytes_per_replica:
            n = min(n, node.free_memory // spec.memory_bytes_per_replica)
        return n

    def gpu_only(self, spec: JobSpec) -> bool:
        """Whether the fast GPU-count index answers for this shape."""
        return (spec.gpus_per_replica > 0 and not spec.cpus_per_replica and not spec.memory_bytes_per_replica
                and not spec.node_selector and not self.remote and spec.executor == "local")

    def fits(self, spec: JobSpec) -> bool:
        """Whether every replica of ``spec`` can be placed now (all of them: gangs are all-or-nothing)."""
        if self.gpu_only(spec):
            r, need = spec.gpus_per_replica, spec.replicas
            if spec.gpus > self.free_gpus:
                return False
            for f in range(r, len(self.by_free)):
                need -= (f // r) * len(self.by_free[f])
                if need <= 0:
                    return True
            return False
        need = spec.replicas
        for node in self.up_nodes():
            need -= self.replicas_on(node, spec)
            if need <= 0:
                return True
        return False

    def up_nodes(self) -> Iterator[Node]:
        """Nodes that accept new work."""
        return (n for n in self.nodes if n.status == "up")

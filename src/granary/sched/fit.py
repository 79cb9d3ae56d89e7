"""Whether a job can ever run on the registered nodes, and if not, why (said at submit and in `granary jobs`)."""

from __future__ import annotations

from collections.abc import Sequence

from granary.sched.model import JobSpec, NodeSpec


def never_fits(spec: JobSpec, nodes: Sequence[NodeSpec]) -> str | None:
    """Why no registered node (or set of nodes, for a gang) can ever hold ``spec``; None when one can.

    Drained and down nodes count (they may come back); only their size and labels matter. A job that cannot
    fit stays pending until a node that can hold it registers.
    """
    if not nodes:
        return "no node is registered (start one: `granary sched up` or `granary sched agent`)"
    matching = [n for n in nodes if all(n.labels.get(k) == v for k, v in spec.node_selector.items())]
    if not matching:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(spec.node_selector.items()))
        return f"no registered node carries the labels {wanted}"
    per_replica = [n for n in matching if n.gpus >= spec.gpus_per_replica and n.cpus >= spec.cpus_per_replica
                   and (not n.memory_bytes or n.memory_bytes >= spec.memory_bytes_per_replica)]
    if not per_replica:
        biggest = max(matching, key=lambda n: (n.gpus, n.cpus))
        needs = [f"{spec.gpus_per_replica} GPU(s)" if spec.gpus_per_replica > biggest.gpus else "",
                 f"{spec.cpus_per_replica:g} CPU(s)" if spec.cpus_per_replica > biggest.cpus else "",
                 f"{spec.memory_bytes_per_replica} bytes of memory"
                 if biggest.memory_bytes and spec.memory_bytes_per_replica > biggest.memory_bytes else ""]
        need = " and ".join(x for x in needs if x) or "more than any node has"
        return (f"each replica needs {need}; the largest matching node, {biggest.name}, has "
                f"{biggest.gpus} GPU(s) and {biggest.cpus:g} CPU(s)")
    if spec.gpus_per_replica and spec.replicas > 1:
        slots = sum(n.gpus // spec.gpus_per_replica for n in per_replica)
        if slots < spec.replicas:
            return (f"the gang needs {spec.replicas} replicas of {spec.gpus_per_replica} GPU(s); "
                    f"all matching nodes together hold {slots}")
    return None

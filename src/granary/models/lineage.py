"""A model version's lineage back to raw data: checkpoint, training data versions, tokenization, curation, ingest.

The walk reads only manifests (descriptions of versions, not their data): each version's lineage record names
its sources (version ids or dataset names, see :func:`granary.store.lineage.lineage_sources`), and a checkpoint's
lineage names the data versions its run streamed. The policy of a model's data is the merge of the policies of
every dataset on that walk (intersection of purposes, union of licenses), as the store does for derived data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from granary.errors import NotFoundError
from granary.store.lineage import lineage_sources

if TYPE_CHECKING:
    from granary.models.registry import ModelVersion
    from granary.secure.policy import Policy
    from granary.store import Store

MAX_NODES = 500


def _node(store: Store, vid: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """A version's node and the ids / dataset names of its sources."""
    from granary.store import refs

    with store.catalog.read() as conn:
        info = refs.get_version(conn, vid)
    manifest = store.manifest(info)
    lin = dict(manifest.lineage)
    node: dict[str, Any] = {"id": info.id, "dataset": info.dataset, "kind": info.kind, "rows": info.num_rows,
                            "tokens": info.num_tokens, "message": info.message,
                            "made_by": lin.get("command") or lin.get("kind") or "ingest"}
    steps = lin.get("steps")
    if isinstance(steps, dict):  # a curation run: what each step kept and removed
        node["curation"] = {name: {k: s.get(k) for k in ("rows_in", "rows_out", "removed") if k in s}
                            for name, s in steps.items() if isinstance(s, dict)}
    ids, names = lineage_sources(lin)
    data = lin.get("data")
    if isinstance(data, dict):  # a checkpoint: the versions its run streamed
        ids += [v for v in data.get("versions") or [] if isinstance(v, str)]
    return node, ids, names


def lineage_graph(store: Store, mv: ModelVersion) -> dict[str, Any]:
    """``{"nodes": [...], "edges": [[from, to], ...], "roots": [...]}`` from the model version down to the
    versions nothing else was derived from (raw data)."""
    model_id = f"model:{mv.ref}"
    nodes: dict[str, dict[str, Any]] = {model_id: {"id": model_id, "dataset": mv.dataset, "kind": "model",
                                                   "made_by": mv.method}}
    edges: list[list[str]] = []
    start = [mv.facts.get("checkpoint", {}).get("version"), *list(mv.facts.get("data", {}).get("versions", []))]
    todo = [(model_id, v) for v in dict.fromkeys(start) if v]
    while todo and len(nodes) < MAX_NODES:
        parent, vid = todo.pop(0)
        edges.append([parent, vid])
        if vid in nodes:
            continue
        try:
            node, ids, names = _node(store, vid)
        except NotFoundError:
            nodes[vid] = {"id": vid, "dataset": "?", "kind": "missing", "made_by": "?"}
            continue
        nodes[vid] = node
        todo += [(vid, i) for i in dict.fromkeys(ids) if i != vid]
        for name in dict.fromkeys(names):
            key = f"dataset:{name}"
            edges.append([vid, key])
            nodes.setdefault(key, {"id": key, "dataset": name, "kind": "dataset", "made_by": "?"})
    sources = {a for a, _ in edges}
    roots = [k for k, n in nodes.items() if k not in sources and n["kind"] not in ("model", "checkpoint")]
    return {"nodes": list(nodes.values()), "edges": edges, "roots": roots}


def data_datasets(store: Store, mv: ModelVersion, *, graph: dict[str, Any] | None = None) -> list[str]:
    """Every dataset on the model's walk to raw data (checkpoint and model datasets excluded); ``graph`` is the
    version's :func:`lineage_graph` when the caller has it already."""
    graph = graph if graph is not None else lineage_graph(store, mv)
    return sorted({n["dataset"] for n in graph["nodes"]
                   if n["kind"] not in ("model", "checkpoint", "missing") and n["dataset"] != "?"})


def data_policy(store: Store, mv: ModelVersion, *, graph: dict[str, Any] | None = None) -> Policy:
    """The merged policy of the model's data (licenses, purposes, restrictions), from the catalog's policies."""
    from granary.secure.policy import PolicyBook, merge

    book = PolicyBook(store.catalog)
    names = data_datasets(store, mv, graph=graph)
    return merge({n: book.get(n) for n in names})

"""A small catalog for the API tests: datasets with lineage, principals with tokens, jobs, nodes, endpoints."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

from granary.config import Settings
from granary.sched.journal import register_node, submit_job
from granary.sched.model import JobSpec, NodeSpec
from granary.secure.hooks import SecureHooks
from granary.secure.policy import Policy
from granary.serve.endpoints import EndpointBook
from granary.store import Store


@dataclass
class Seeded:
    """What :func:`seed` made."""

    raw: list[str]          # version ids of web, oldest first
    clean: str              # the curated version (web-clean)
    tokens: str             # the "tokenized" version (web-tok)
    jobs: list[str]         # job ids of tenant default
    other_job: str          # a job of tenant other
    tokens_by_role: dict[str, str]


def docs(n: int, start: int = 0) -> pa.Table:
    texts = [f"document {i} about granaries and grain storage " + "word " * (i % 7) for i in range(start, start + n)]
    return pa.table({"id": [f"d{i}" for i in range(start, start + n)], "text": texts,
                     "lang": ["en" if i % 3 else "de" for i in range(start, start + n)]})


def seed(settings: Settings) -> Seeded:
    """Fill the catalog of ``settings`` as the local admin."""
    hooks = SecureHooks.from_settings(settings, environ={})
    store = Store(settings, hooks=hooks, catalog=hooks.guard.catalog)
    guard = hooks.guard
    store.create_dataset("web", description="crawled pages")
    v1 = store.commit_table("web", docs(40), message="first crawl",
                            lineage={"command": "ingest", "params": {"paths": ["/data/crawl-1.jsonl"]}})
    v2 = store.commit_table("web", docs(20, 40), message="second crawl",
                            lineage={"command": "ingest", "params": {"paths": ["/data/crawl-2.jsonl"]}})
    store.create_dataset("web-clean", description="web, curated")
    v3 = store.commit_table("web-clean", docs(30), message="curated with pipeline basic",
                            lineage={"command": "granary curate", "input": {"input_version": v2.id}})
    store.create_dataset("web-tok", description="web-clean, tokenized")
    v4 = store.commit_table("web-tok", docs(5), message="tokenized",
                            lineage={"command": "tokenize", "inputs": [v3.id]})
    store.create_dataset("corpus-tok", kind="tokens", description="real token shards")
    import numpy as np

    with store.transaction("corpus-tok") as txn:
        txn.add_shards([store.write_token_shard("corpus-tok", [np.arange(i * 100, i * 100 + 50, dtype=np.uint16)
                                                               for i in range(8)])])
        txn.commit(message="tokens", lineage={"command": "tokenize", "inputs": [v3.id]})
    store.create_dataset("hidden", description="another tenant's data")
    guard.set_policy("hidden", Policy(tenant="other"))
    store.tag("web", "v1", ref=f"web@{v1.id}")
    tokens: dict[str, str] = {}
    for name, role, scopes in (("olive", "writer", ("read", "write")), ("rita", "reader", ("read",)),
                               ("ada", "admin", ("read", "write", "admin"))):
        guard.add_principal(name, tenant="default")
        guard.grant(name, role, tenant="default")  # type: ignore[arg-type]
        tokens[role] = guard.issue_token(name, scopes=scopes).secret
    catalog = guard.catalog
    now = time.time()
    jobs = [submit_job(catalog, JobSpec(name=f"train-{i}", tenant="default", command="true", gpus_per_replica=2),
                       now=now + i) for i in range(5)]
    other = submit_job(catalog, JobSpec(name="secret-train", tenant="other", command="true"), now=now + 10)
    with catalog.write() as conn:
        register_node(conn, NodeSpec(name="gpu-01", gpus=8, cpus=64, memory_bytes=512 << 30), now)
        register_node(conn, NodeSpec(name="gpu-02", gpus=8, cpus=64, memory_bytes=512 << 30), now)
    EndpointBook(catalog).register("llama-8b", "replica-0", "http://127.0.0.1:9", job_id=jobs[0])
    return Seeded(raw=[v1.id, v2.id], clean=v3.id, tokens=v4.id, jobs=jobs, other_job=other, tokens_by_role=tokens)


def seed_run(settings: Settings, name: str = "tiny", *, steps: int = 6) -> str:
    """Train the reference GPT for ``steps`` steps on ``corpus-tok`` (checkpoints every 2 steps, run folder under
    ``home/train``), as the local admin; returns the run's checkpoint dataset."""
    from granary.train import fit
    from granary.train.recipe import recipe_from_dict

    hooks = SecureHooks.from_settings(settings, environ={})
    store = Store(settings, hooks=hooks, catalog=hooks.guard.catalog)
    recipe = recipe_from_dict({
        "name": name, "steps": steps, "seed": 1, "run_dir": str(settings.home / "train" / name),
        "model": {"vocab_size": 4096, "d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16},
        "data": {"dataset": "corpus-tok", "batch_size": 2}, "optim": {"lr": 0.01},
        "checkpoint": {"every": 2}, "fault": {"step_timeout_s": 0}})
    fit(recipe, store=store)
    return recipe.checkpoint_dataset


def seed_models(settings: Settings, checkpoint: str, name: str = "tiny") -> None:
    """Register model ``name`` from ``checkpoint`` twice (v1, v2: the same weights) and make v3, its dynamic int8
    compression; evaluate v1 and v3 on ``corpus-tok`` (v1 and v2 in one process: their metrics are equal) and point
    ``staging`` at v2, as the local admin. The data stays unrestricted, so `production` may point anywhere."""
    from granary.models.compress import compress
    from granary.models.evaluate import evaluate, make_plan
    from granary.models.registry import Registry

    hooks = SecureHooks.from_settings(settings, environ={})
    store = Store(settings, hooks=hooks, catalog=hooks.guard.catalog)
    registry = Registry(store)
    one = registry.register(checkpoint, name)
    two = registry.register(checkpoint, name)
    for mv in (one, two):
        evaluate(store, make_plan(store, mv.ref, "corpus-tok", num_shards=2), inline=True)
    compress(registry, one.ref, "int8-dynamic", data="corpus-tok", max_samples=100)
    registry.set_alias(two.ref, "staging")

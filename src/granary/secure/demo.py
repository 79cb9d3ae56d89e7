"""The governance part of `granary demo`: a policy, a purpose check, a private statistic and the audit chain."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from granary.errors import AuthorizationError
from granary.secure.dp import PrivateStats
from granary.secure.guard import Guard
from granary.secure.hooks import SecureHooks
from granary.secure.settings import SecureSettings
from granary.store import Store

if TYPE_CHECKING:
    from rich.console import Console

DATASET = "demo-curated"
SOURCES = ("web", "forum", "docs")


def run(store: Store, console: Console) -> dict[str, Any]:
    """Give `demo-curated` a license and allowed purposes, read it as a training job would, show a refused
    read, release a differentially private histogram of its sources, and verify the audit chain."""
    guard = Guard(store.catalog, SecureSettings.from_env(store.settings.home))
    policy = replace(guard.policies.get(DATASET), licenses=frozenset({"CC0-1.0"}),
                     purposes=frozenset({"pretraining", "research"}))
    guard.set_policy(DATASET, policy)
    secure = Store(store.settings, hooks=SecureHooks(guard), catalog=guard.catalog)
    version = secure.open_version(DATASET, purpose="pretraining")
    try:
        secure.open_version(DATASET, purpose="advertising")
        refused = "not refused"
    except AuthorizationError as exc:
        refused = Exception.__str__(exc)
    stats = PrivateStats(guard)
    spent = stats.budget(DATASET)["spent_epsilon"]
    stats.set_budget(DATASET, epsilon=spent + 1.0)  # a fresh unit of budget for this run of the demo
    counts = dict.fromkeys(SOURCES, 0)
    for row in secure.read_table(f"{DATASET}@{version.version_id}", columns=["source"], purpose="research") \
            .column("source").value_counts().to_pylist():
        counts[str(row["values"])] = counts.get(str(row["values"]), 0) + int(row["counts"])
    release = stats.histogram(DATASET, counts, epsilon=0.5)
    chain = guard.audit.verify()
    console.print(f"  purpose 'advertising' refused: {refused}", highlight=False)
    return {
        "policy": {"licenses": sorted(policy.licenses), "purposes": sorted(policy.purposes or ())},
        "private_source_histogram": {k: round(v) for k, v in dict(release.value).items()},
        "privacy_budget": stats.budget(DATASET),
        "audit_chain": f"ok, {chain.records} records" if chain.ok else f"broken at {chain.first_bad}",
    }

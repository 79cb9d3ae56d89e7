"""Deployment: model servers as scheduler jobs that register with the gateway; canaries by weight; rollback.

``deploy`` starts ``replicas`` built-in servers of a model version (each a job running ``granary gateway
endpoint -- python -m granary.models.worker serve ...``, which registers the server in the catalog's endpoint
registry once it is healthy, so every gateway with a route for the model picks it up). Nothing changes for
clients until every new server is healthy; servers that never become healthy are stopped and the previous
version keeps serving (:class:`DeployError`).

A canary gets ``weight`` of the traffic next to the serving version. The watch reads each canary server's
``/stats`` and rolls back (withdraws the canary's endpoints, then cancels its jobs) as soon as its error rate or
p95 latency crosses the thresholds, or a canary server disappears; after ``watch_s`` without a trip the canary
takes the full weight and the previous version is drained and stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from granary.models import tables as t
from granary.models.errors import DeployError
from granary.models.registry import ModelVersion, Registry

if TYPE_CHECKING:
    from granary.models.jobs import LocalJobs
    from granary.serve.endpoints import Endpoint

log = logging.getLogger(__name__)
FULL_WEIGHT = 100.0


@dataclass(kw_only=True, frozen=True)
class CanaryPolicy:
    """How a canary is judged.

    Attributes:
        weight: share of the traffic the canary gets, in (0, 1).
        watch_s: how long it must stay healthy before it is promoted.
        max_error_rate: roll back above this share of failed requests (after ``min_requests``).
        max_p95_ms: roll back when its p95 latency exceeds this (None: latency is not judged).
        min_requests: requests the canary must have answered before its error rate is judged.
        poll_s: seconds between looks at the canary's stats.
    """

    weight: float = 0.1
    watch_s: float = 30.0
    max_error_rate: float = 0.05
    max_p95_ms: float | None = None
    min_requests: int = 5
    poll_s: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.weight < 1:
            raise ValueError(f"canary weight must be in (0, 1), got {self.weight}")
        if self.watch_s < 0 or not 0 <= self.max_error_rate <= 1 or self.min_requests < 1 or self.poll_s <= 0:
            raise ValueError("watch_s >= 0, max_error_rate in [0, 1], min_requests >= 1, poll_s > 0")


@dataclass(frozen=True)
class Deployment:
    name: str
    version: int
    role: str
    served_as: str
    job_ids: list[str]
    replicas: int
    weight: float
    state: str
    updated_at: float

    def backend(self, replica: int) -> str:
        return f"{self.served_as}-v{self.version}-{replica}"[:64]


def _stats(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/stats", timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Deployer:
    """Deploy, canary, roll back and undeploy model versions.

    Args:
        registry: the registry.
        jobs: run the servers on these in-process scheduler threads (tests, benchmarks, notebooks); None
            submits them to the scheduler that runs on the catalog (``granary sched up``).
        ready_timeout_s: servers not healthy by then fail the deployment.
        lease_s: endpoint registrations lapse this long after a server's last heartbeat.
        purpose: declared purpose of the servers' reads of the model files (which carry the data's policy).
    """

    def __init__(self, registry: Registry, *, jobs: LocalJobs | None = None, ready_timeout_s: float = 120.0,
                 lease_s: float = 10.0, purpose: str | None = None) -> None:
        from granary.serve.endpoints import EndpointBook

        self.registry = registry
        self.catalog = registry.catalog
        self.jobs = jobs
        self.ready_timeout_s = ready_timeout_s
        self.lease_s = lease_s
        self.purpose = purpose
        self.book = EndpointBook(self.catalog)

    # -- state ----------------------------------------------------------------------------------------
    def deployments(self, name: str | None = None, *, active: bool = True) -> list[Deployment]:
        q = sa.select(t.deployments).order_by(t.deployments.c.name, t.deployments.c.version)
        if name is not None:
            q = q.where(t.deployments.c.name == name)
        if active:
            q = q.where(t.deployments.c.state.in_(("serving", "canary", "starting")))
        with self.catalog.read() as conn:
            rows = conn.execute(q).all()
        return [Deployment(name=r.name, version=r.version, role=r.role, served_as=r.served_as,
                           job_ids=json.loads(r.job_ids), replicas=r.replicas, weight=r.weight, state=r.state,
                           updated_at=r.updated_at) for r in rows]

    def _save(self, d: Deployment) -> None:
        with self.catalog.write() as conn:
            conn.execute(t.deployments.delete().where(t.deployments.c.name == d.name,
                                                      t.deployments.c.version == d.version))
            conn.execute(t.deployments.insert().values(
                name=d.name, version=d.version, role=d.role, served_as=d.served_as, job_ids=json.dumps(d.job_ids),
                replicas=d.replicas, weight=d.weight, state=d.state, updated_at=time.time()))

    def _set_state(self, d: Deployment, state: str, role: str | None = None, weight: float | None = None) -> Deployment:
        new = Deployment(**{**d.__dict__, "state": state, "role": role or d.role,
                            "weight": d.weight if weight is None else weight, "updated_at": time.time()})
        self._save(new)
        return new

    # -- deploy -----------------------------------------------------------------------------------------
    def deploy(self, ref: str, *, replicas: int = 1, served_as: str | None = None,
               canary: CanaryPolicy | None = None, fault: dict[str, Any] | None = None) -> dict[str, Any]:
        """Serve model version ``ref`` (``name@production``, ``name@3``) with ``replicas`` servers.

        Without ``canary`` the new servers take over once all are healthy and the previous version's servers
        are stopped; with it, see the module docstring. ``fault`` (``{"fail_rate": 1.0}`` or
        ``{"never_ready": True}``) makes the new servers misbehave on purpose (tests, drills).

        Returns:
            ``{"model", "served_as", "outcome": "serving" | "promoted" | "rolled-back", ...}``.
        """
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        mv = self.registry.get(ref)
        served = served_as or mv.name
        current = [d for d in self.deployments(mv.name) if d.version != mv.version and d.state == "serving"]
        if canary is not None and not current:
            raise DeployError(f"{mv.name} has no serving version to run a canary against",
                              hint=f"deploy it first without --canary: granary deploy {ref}")
        if any(d.version == mv.version for d in self.deployments(mv.name)):
            raise DeployError(f"{mv.ref} is already deployed", hint=f"undeploy it first: granary undeploy {mv.ref}")
        stable_total = sum(d.weight * d.replicas for d in current)
        weight = FULL_WEIGHT if canary is None else canary.weight / (1 - canary.weight) * stable_total / replicas
        new = self._start(mv, served, replicas, weight, role="canary" if canary else "serving", fault=fault or {})
        self.registry.record(mv.name, mv.version, "deploy", {"served_as": served, "replicas": replicas,
                                                             "canary": canary.weight if canary else None})
        if canary is None:
            new = self._set_state(new, "serving")
            for old in current:
                self._stop(old, "stopped")
            return {"model": mv.ref, "served_as": served, "outcome": "serving", "replicas": replicas,
                    "replaced": [f"{d.name}@{d.version}" for d in current]}
        return self._watch(mv, new, current, canary)

    def _start(self, mv: ModelVersion, served: str, replicas: int, weight: float, *, role: str,
               fault: dict[str, Any]) -> Deployment:
        d = Deployment(name=mv.name, version=mv.version, role=role, served_as=served, job_ids=[],
                       replicas=replicas, weight=weight, state="starting", updated_at=time.time())
        ids = [self._submit(mv, d, i, fault) for i in range(replicas)]
        d = Deployment(**{**d.__dict__, "job_ids": ids})
        self._save(d)
        try:
            self._wait_healthy(d)
        except DeployError as exc:
            self._stop(d, "failed")
            self.registry.record(mv.name, mv.version, "deploy-failed", {"reason": str(exc)})
            raise
        return self._set_state(d, "canary" if role == "canary" else "starting")

    def _submit(self, mv: ModelVersion, d: Deployment, replica: int, fault: dict[str, Any]) -> str:
        from granary.models.evaluate import job_env

        serve = [sys.executable, "-m", "granary.models.worker", "serve", "--model", mv.ref, "--served-as",
                 d.served_as, "--port", "{port}"]
        if fault.get("fail_rate"):
            serve += ["--fail-rate", str(float(fault["fail_rate"]))]
        if fault.get("never_ready"):
            serve.append("--never-ready")
        if self.purpose:
            serve += ["--purpose", self.purpose]
        argv = ["-m", "granary.cli.main", "gateway", "endpoint", "--model", d.served_as, "--weight",
                f"{d.weight:.6g}", "--backend-name", d.backend(replica), "--lease-s", str(self.lease_s),
                "--drain-s", "0.5", "--ready-timeout-s", str(self.ready_timeout_s), "--", *serve]
        name = f"serve-{d.backend(replica)}"
        if self.jobs is not None:
            return self.jobs.submit(self.jobs.spec(name, argv, env=job_env(self.registry.store), grace_s=10.0))
        from granary.sched.journal import submit_job
        from granary.sched.model import JobSpec

        return submit_job(self.catalog, JobSpec(name=name, command=(sys.executable, *argv), cpus_per_replica=1.0,
                                                tenant="models", env=job_env(self.registry.store), grace_s=10.0))

    def _endpoints(self, d: Deployment) -> list[Endpoint]:
        names = {d.backend(i) for i in range(d.replicas)}
        return [e for e in self.book.live() if e.model == d.served_as and e.name in names]

    def _wait_healthy(self, d: Deployment) -> None:
        from granary.sched.journal import get_job
        from granary.sched.model import TERMINAL

        deadline = time.monotonic() + self.ready_timeout_s
        while len(self._endpoints(d)) < d.replicas:
            for job_id in d.job_ids:
                row = get_job(self.catalog, job_id)[0]
                if row.state in TERMINAL:
                    raise DeployError(f"server job {job_id} of {d.name}@{d.version} ended ({row.state}) before "
                                      f"it became healthy", hint=self._hint(job_id))
            if time.monotonic() > deadline:
                raise DeployError(f"{d.name}@{d.version}: {len(self._endpoints(d))} of {d.replicas} server(s) "
                                  f"healthy after {self.ready_timeout_s:g}s; the previous version keeps serving",
                                  hint=self._hint(d.job_ids[0]))
            time.sleep(0.1)

    def _hint(self, job_id: str) -> str:
        tail = self.jobs.log_tail(job_id, 400) if self.jobs is not None else ""
        return f"see `granary job {job_id}`" + (f"; its output ends with: {tail}" if tail else "")

    def _watch(self, mv: ModelVersion, canary_d: Deployment, current: list[Deployment],
               policy: CanaryPolicy) -> dict[str, Any]:
        t0 = time.monotonic()
        urls = [e.url for e in self._endpoints(canary_d)]
        reason = ""
        while time.monotonic() - t0 < policy.watch_s:
            reason = self._verdict(urls, canary_d, policy)
            if reason:
                break
            time.sleep(policy.poll_s)
        if reason:
            detected = time.monotonic()
            self._stop(canary_d, "rolled-back")
            self.registry.record(mv.name, mv.version, "rollback", {"reason": reason})
            log.warning("canary %s rolled back: %s", mv.ref, reason)
            return {"model": mv.ref, "served_as": canary_d.served_as, "outcome": "rolled-back", "reason": reason,
                    "detected_after_s": round(detected - t0, 3),
                    "rollback_s": round(time.monotonic() - detected, 3)}
        for ep in self._endpoints(canary_d):
            self.book.register(ep.model, ep.name, ep.url, weight=FULL_WEIGHT, job_id=ep.job_id, lease_s=ep.lease_s)
        self._set_state(canary_d, "serving", role="serving", weight=FULL_WEIGHT)
        for old in current:
            self._stop(old, "stopped")
        self.registry.record(mv.name, mv.version, "promote", {"watched_s": policy.watch_s})
        return {"model": mv.ref, "served_as": canary_d.served_as, "outcome": "promoted",
                "replaced": [f"{d.name}@{d.version}" for d in current]}

    def _verdict(self, urls: list[str], d: Deployment, policy: CanaryPolicy) -> str:
        if len(self._endpoints(d)) < d.replicas:
            return "a canary server left the endpoint registry (crashed or lost its lease)"
        requests = errors = 0
        p95: list[float] = []
        for url in urls:
            s = _stats(url)
            if s is None:
                return f"canary server {url} does not answer"
            requests += int(s["requests"])
            errors += int(s["errors"])
            if s.get("p95_ms") is not None:
                p95.append(float(s["p95_ms"]))
        if requests >= policy.min_requests and errors / requests > policy.max_error_rate:
            return f"error rate {errors / requests:.1%} over {requests} requests > {policy.max_error_rate:.1%}"
        if policy.max_p95_ms is not None and requests >= policy.min_requests and p95 and max(p95) > policy.max_p95_ms:
            return f"p95 latency {max(p95):.1f} ms > {policy.max_p95_ms:g} ms"
        return ""

    # -- stop -------------------------------------------------------------------------------------------
    def _stop(self, d: Deployment, state: str) -> None:
        """Withdraw the endpoints at once (gateways stop routing on their next discovery), then cancel the jobs."""
        from granary.sched.errors import TransitionError
        from granary.sched.journal import request_cancel

        for i in range(d.replicas):
            self.book.withdraw(d.served_as, d.backend(i))
        for job_id in d.job_ids:
            with contextlib.suppress(TransitionError):  # it ended already
                request_cancel(self.catalog, job_id)
        self._set_state(d, state)

    def undeploy(self, ref: str) -> list[str]:
        """Stop every deployed version of a model (``name``) or one version (``name@N`` / ``name@alias``)."""
        name, _, at = ref.partition("@")
        version = self.registry.get(ref).version if at else None
        stopped = []
        for d in self.deployments(name):
            if version is None or d.version == version:
                self._stop(d, "stopped")
                self.registry.record(d.name, d.version, "undeploy", {"served_as": d.served_as})
                stopped.append(f"{d.name}@{d.version}")
        if not stopped:
            raise DeployError(f"{ref} is not deployed", hint="list deployments with `granary model show NAME`")
        return stopped

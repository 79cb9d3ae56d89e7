"""Evaluation: a model version on a held-out tokens version, sharded over the samples, shards run by workers.

Sample ``i`` of a tokens version is its tokens ``[i * L, (i + 1) * L)`` with ``L = context + 1`` (inputs and
next-token targets). The samples are cut into ``num_shards`` contiguous shards; each worker (a scheduler job, a
real process) computes the sums of its shards (token negative log-likelihood, correct top-1 predictions, tokens)
and writes one catalog row per finished shard. The result is a pure function of the shard sums added in shard
order, so it is identical for any number of workers, and a run killed halfway resumes with only the missing
shards. Data is read through the store's gate with the declared purpose (default ``evaluation``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from granary.models import tables as t
from granary.models.errors import EvalError, ModelError
from granary.models.registry import ModelVersion, Registry

if TYPE_CHECKING:
    from granary.store import Store

log = logging.getLogger(__name__)
METRICS = ("perplexity", "accuracy", "loss")
EVAL_PURPOSE = "evaluation"
SAMPLES_PER_SHARD = 1000  # small enough that two workers claiming shards end within ~one shard of each other
MAX_AUTO_SHARDS = 4096  # one catalog row per shard: bounded for very large held-out sets


@dataclass(kw_only=True, frozen=True)
class EvalPlan:
    """What one evaluation computes.

    Attributes:
        model: the model version ref (``name@N``).
        data: the tokens version id.
        data_ref: ``dataset@id`` of the tokens version.
        num_shards: shards the samples are cut into.
        seq_len: tokens per sample (context + 1).
        max_samples: evaluate only the first N samples (0: all).
        samples: the samples that makes (``min(available, max_samples)``; 0: not known, older plans).
        batch_size: samples per forward pass.
        purpose: declared purpose of the data read.
    """

    model: str
    data: str
    data_ref: str
    num_shards: int = 16
    seq_len: int
    max_samples: int = 0
    samples: int = 0
    batch_size: int = 64
    purpose: str = EVAL_PURPOSE

    def __post_init__(self) -> None:
        if self.num_shards < 1 or self.batch_size < 1 or self.max_samples < 0 or self.samples < 0:
            raise ValueError("num_shards and batch_size must be >= 1, max_samples and samples >= 0")

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def auto_shards(num_samples: int, *, samples_per_shard: int = SAMPLES_PER_SHARD) -> int:
    """Shards for ``num_samples`` samples: about ``samples_per_shard`` each (at least one, at most 4096).

    Workers claim shards one at a time, so a run ends at most one shard after its last worker could have
    stopped: small shards keep that tail short, and the per-shard cost (one catalog row) stays negligible.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    return max(1, min(MAX_AUTO_SHARDS, -(-max(0, num_samples) // samples_per_shard)))


def shard_range(num_samples: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Samples ``[start, stop)`` of shard ``shard`` (contiguous, sizes differ by at most one)."""
    return shard * num_samples // num_shards, (shard + 1) * num_samples // num_shards


def shard_sums(model: Any, tokens: np.ndarray, *, batch_size: int) -> dict[str, float]:
    """Sums over samples (rows of ``tokens``, each context + 1 long): nll, correct, tokens."""
    import torch
    import torch.nn.functional as F

    nll, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for start in range(0, len(tokens), batch_size):
            batch = torch.from_numpy(tokens[start:start + batch_size].astype(np.int64))
            logits = model(batch[:, :-1]).float()
            targets = batch[:, 1:]
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                         reduction="sum").double())
            correct += int((logits.argmax(-1) == targets).sum())
            count += targets.numel()
    return {"nll": nll, "correct": correct, "tokens": count}


def run_shards(store: Store, plan: EvalPlan, shards: Sequence[int], *, claims: Path | None = None) -> list[int]:
    """Compute the given shards that are not done yet and record each as it finishes; returns those computed.

    This is what an evaluation job runs (see :mod:`granary.models.worker`). With ``claims`` (a directory shared
    by the workers of one run), a worker takes the next shard no other worker has claimed (an exclusive file
    create), so a worker that gets less CPU on a busy machine simply computes fewer shards.
    """
    from granary.stream.source import TokenSource

    registry = Registry(store)
    mv = registry.get(plan.model)
    todo = [s for s in shards if s not in done_shards(store, mv, plan)]
    if not todo:
        return []
    model = registry.load(mv, purpose=plan.purpose)
    source = TokenSource(store, store.open_version(plan.data_ref, purpose=plan.purpose), seq_len=plan.seq_len)
    total = _num_samples(source.num_samples, plan)
    if plan.samples and total != plan.samples:
        raise EvalError(f"{plan.data_ref} holds {total} samples for this plan, not the {plan.samples} it was made for",
                        hint="make the plan again (make_plan) from the data version")
    computed = []
    for shard in todo:
        if claims is not None and not _claim(claims, shard):
            continue
        computed.append(shard)
        a, b = shard_range(total, shard, plan.num_shards)
        tokens = source.gather(np.arange(a, b, dtype=np.int64)) if b > a else np.zeros((0, plan.seq_len))
        sums: dict[str, float] = {**shard_sums(model, tokens, batch_size=plan.batch_size), "start": a, "stop": b}
        with store.catalog.write() as conn:
            conn.execute(t.evals.insert().values(name=mv.name, version=mv.version, data_version=plan.data,
                                                 num_shards=plan.num_shards, shard=shard, seq_len=plan.seq_len,
                                                 sums=json.dumps(sums), at=time.time()))
        log.info("eval %s on %s: shard %d/%d done (%d samples)", mv.ref, plan.data[:12], shard, plan.num_shards,
                 b - a)
    return computed


def _claim(claims: Path, shard: int) -> bool:
    try:
        os.close(os.open(claims / str(shard), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _num_samples(available: int, plan: EvalPlan) -> int:
    return min(available, plan.max_samples) if plan.max_samples else available


def done_shards(store: Store, mv: ModelVersion, plan: EvalPlan) -> dict[int, dict[str, float]]:
    """Shard -> sums of the shards of this evaluation already recorded.

    A recorded shard over other samples (the same shard count with another ``max_samples``) is not this
    evaluation's: :func:`evaluate` refuses to run over it rather than add it in (see :func:`foreign_shards`).
    """
    return {s: sums for s, sums in _recorded(store, mv, plan).items() if _covers(sums, plan, s)}


def foreign_shards(store: Store, mv: ModelVersion, plan: EvalPlan) -> list[int]:
    """Shards recorded for this model, data and shard count over other samples than ``plan``'s."""
    return sorted(s for s, sums in _recorded(store, mv, plan).items() if not _covers(sums, plan, s))


def _recorded(store: Store, mv: ModelVersion, plan: EvalPlan) -> dict[int, dict[str, float]]:
    c = t.evals.c
    with store.catalog.read() as conn:
        rows = conn.execute(sa.select(c.shard, c.sums).where(
            c.name == mv.name, c.version == mv.version, c.data_version == plan.data,
            c.num_shards == plan.num_shards, c.seq_len == plan.seq_len)).all()
    return {int(r.shard): json.loads(r.sums) for r in rows}


def _covers(sums: dict[str, float], plan: EvalPlan, shard: int) -> bool:
    """Whether recorded ``sums`` are of ``plan``'s samples of ``shard`` (rows recorded before the sample range
    was kept, or plans without a sample count, cannot tell and are taken as they are)."""
    if "start" not in sums or not plan.samples:
        return True
    return (int(sums["start"]), int(sums["stop"])) == shard_range(plan.samples, shard, plan.num_shards)


def metrics_of(sums: Sequence[dict[str, float]]) -> dict[str, float]:
    """Perplexity, accuracy and mean loss from shard sums (added in the given order)."""
    nll = math.fsum(s["nll"] for s in sums)
    tokens = sum(int(s["tokens"]) for s in sums)
    correct = sum(int(s["correct"]) for s in sums)
    if tokens == 0:
        raise EvalError("the evaluation covered no tokens", hint="evaluate on a larger tokens version")
    loss = nll / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "accuracy": correct / tokens, "tokens": float(tokens)}


def make_plan(store: Store, model: str, data: str, *, num_shards: int | None = None, max_samples: int = 0,
              batch_size: int = 64, purpose: str = EVAL_PURPOSE) -> EvalPlan:
    """Resolve the model and the data version (pinned by id) into a plan; the data is opened through the gate
    first, so a caller who may not read it for ``purpose`` is refused (and audited) before anything runs.

    ``num_shards`` None picks :func:`auto_shards` of the samples evaluated (about 1000 samples per shard)."""
    manifest = store.open_version(data, purpose=purpose)
    if manifest.kind != "tokens":
        raise EvalError(f"{data} is a {manifest.kind} version; evaluation reads a tokens version",
                        hint="tokenize the held-out data first: granary tokenize REF --output NAME")
    mv = Registry(store).get(model)
    vid = manifest.version_id
    seq_len = int(mv.facts["arch"]["context"]) + 1
    available = (manifest.num_tokens or 0) // seq_len
    samples = min(available, max_samples) if max_samples else available
    if num_shards is None:
        num_shards = auto_shards(samples)
    return EvalPlan(model=mv.ref, data=vid, data_ref=f"{manifest.dataset}@{vid}", num_shards=num_shards,
                    seq_len=seq_len, max_samples=max_samples, samples=samples, batch_size=batch_size,
                    purpose=purpose)


def evaluate(store: Store, plan: EvalPlan, *, workers: int = 2, timeout_s: float = 3600.0,
             inline: bool = False) -> dict[str, Any]:
    """Run (or resume) an evaluation: the missing shards as ``workers`` scheduler jobs, then the metrics.

    Args:
        store: the store.
        plan: what to evaluate (see :func:`make_plan`).
        workers: parallel worker processes (scheduler jobs); each takes the next unclaimed missing shard.
        timeout_s: give up waiting for the jobs after this long.
        inline: compute in this process instead (no scheduler; for small runs and debugging).

    Returns:
        ``{"model", "data", "metrics": {...}, "shards", "computed", "workers", "seconds"}``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    mv = Registry(store).get(plan.model)
    t0 = time.perf_counter()
    foreign = foreign_shards(store, mv, plan)
    if foreign:
        raise EvalError(f"{mv.ref} was already evaluated on {plan.data_ref} in {plan.num_shards} shards over other "
                        f"samples than these {plan.samples} (shards {foreign[:5]} differ)",
                        hint="evaluate with another --shards count (the two evaluations are kept apart by it)")
    missing = [s for s in range(plan.num_shards) if s not in done_shards(store, mv, plan)]
    if missing and inline:
        run_shards(store, plan, missing)
    elif missing:
        _run_jobs(store, plan, missing, min(workers, len(missing)), timeout_s)
    sums = done_shards(store, mv, plan)
    if len(sums) < plan.num_shards:
        raise EvalError(f"{plan.num_shards - len(sums)} shard(s) of the evaluation are missing",
                        hint="run the same `granary eval` again: finished shards are kept")
    metrics = metrics_of([sums[s] for s in range(plan.num_shards)])
    Registry(store).record(mv.name, mv.version, "eval", {"data": plan.data_ref, "metrics": metrics})
    return {"model": mv.ref, "data": plan.data_ref, "metrics": metrics, "shards": plan.num_shards,
            "computed": len(missing), "workers": 1 if inline else workers, "seconds": time.perf_counter() - t0}


def _run_jobs(store: Store, plan: EvalPlan, missing: list[int], workers: int, timeout_s: float) -> None:
    from granary.models.jobs import LocalJobs

    env = job_env(store)
    work = store.settings.home / "models" / "attempts"
    claims = store.settings.home / "models" / "claims" / uuid.uuid4().hex  # one directory per run: a rerun
    claims.mkdir(parents=True)  # after a kill starts with no stale claims
    shards = ",".join(map(str, missing))
    try:
        # a 0.25 s tick: the controller, agent and waiter threads here poll the catalog, and on a 2-core
        # machine a 50 ms tick took ~10% of a core from the workers
        with LocalJobs(store.catalog, work, cpus=workers, tick_s=0.25) as jobs:
            ids = [jobs.submit(jobs.spec(f"eval-{plan.model}-{i}",
                                         ["-m", "granary.models.worker", "eval", "--plan", plan.to_json(),
                                          "--shards", shards, "--claims", str(claims)], env=env))
                   for i in range(workers)]
            rows = jobs.wait(ids, timeout_s=timeout_s)
            failed = [r for r in rows.values() if r.state != "succeeded"]
            if failed:
                raise EvalError(f"evaluation job {failed[0].id} {failed[0].state}: {failed[0].reason or ''}".strip(),
                                hint=f"finished shards are kept; rerun to resume. Its output ends with: "
                                     f"{jobs.log_tail(failed[0].id, 600)}")
    finally:
        shutil.rmtree(claims, ignore_errors=True)


def job_env(store: Store) -> dict[str, str]:
    """What a worker process needs to open the same store."""
    s = store.settings
    return {"GRANARY_HOME": str(s.home), "GRANARY_CATALOG_URL": s.catalog_url, "GRANARY_STORAGE_URL": s.storage_url,
            "OMP_NUM_THREADS": "1"}


def results(store: Store, mv: ModelVersion) -> list[dict[str, Any]]:
    """Finished evaluations of a version: one entry per (data version, shards) with every shard present."""
    return model_results(store, mv.name, version=mv.version).get(mv.version, [])


def model_results(store: Store, name: str, *, version: int | None = None) -> dict[int, list[dict[str, Any]]]:
    """Finished evaluations of every version of model ``name`` (or of one ``version``), by version number,
    read in one query."""
    c = t.evals.c
    q = sa.select(t.evals).where(c.name == name)
    if version is not None:
        q = q.where(c.version == version)
    with store.catalog.read() as conn:
        rows = conn.execute(q.order_by(c.version, c.data_version, c.num_shards, c.shard)).all()
    groups: dict[tuple[int, str, int, int], dict[int, dict[str, float]]] = {}
    for r in rows:
        groups.setdefault((int(r.version), r.data_version, r.num_shards, r.seq_len), {})[int(r.shard)] = \
            json.loads(r.sums)
    out: dict[int, list[dict[str, Any]]] = {}
    for (number, data, n, seq_len), sums in groups.items():
        if len(sums) == n:
            ordered = [sums[s] for s in range(n)]
            samples = sum(int(x["stop"]) - int(x["start"]) for x in ordered) if all("start" in x for x in ordered) \
                else None
            out.setdefault(number, []).append({"data": data, "shards": n, "seq_len": seq_len, "samples": samples,
                                               "metrics": metrics_of(ordered)})
    return out


def compare(store: Store, refs: Sequence[str], data: str) -> list[dict[str, Any]]:
    """One row per model version with its metrics on tokens version ``data`` (None where not evaluated)."""
    registry = Registry(store)
    vid = store.resolve(data).id
    rows = []
    for ref in refs:
        mv = registry.get(ref)
        found = [r for r in results(store, mv) if r["data"] == vid]
        rows.append({"model": mv.ref, "method": mv.method, "size_bytes": mv.facts.get("size_bytes"),
                     "metrics": found[-1]["metrics"] if found else None})
    return rows


@dataclass(kw_only=True, frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


@dataclass(kw_only=True, frozen=True)
class Gate:
    """A regression gate for alias moves: block if ``metric`` worsens by more than ``max_change`` (relative).

    Attributes:
        data: the tokens version both versions must have been evaluated on.
        metric: ``perplexity`` or ``loss`` (lower is better) or ``accuracy`` (higher is better).
        max_change: allowed relative worsening (0.01 = 1%).
    """

    data: str
    metric: str = "perplexity"
    max_change: float = 0.01

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ModelError(f"unknown gate metric {self.metric!r}", hint=f"one of {list(METRICS)}")

    def check(self, registry: Registry, current: ModelVersion, candidate: ModelVersion) -> Verdict:
        vid = registry.store.resolve(self.data).id
        values = {}
        for mv in (current, candidate):
            found = [r for r in results(registry.store, mv) if r["data"] == vid]
            if not found:
                return Verdict(ok=False, reason=f"{mv.ref} has no evaluation on {self.data}; run `granary eval "
                                                f"{mv.ref} --data {self.data}` first")
            values[mv.ref] = found[-1]["metrics"][self.metric]
        old, new = values[current.ref], values[candidate.ref]
        change = (old - new) / old if self.metric == "accuracy" else (new - old) / old
        if change > self.max_change:
            return Verdict(ok=False, reason=f"{self.metric} worsens by {change:.2%} ({old:.4g} -> {new:.4g}), "
                                            f"more than the gate's {self.max_change:.2%}")
        return Verdict(ok=True, reason=f"{self.metric} {old:.4g} -> {new:.4g}")


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ModelError(f"unknown metric(s) {bad or text!r}", hint=f"choose from {', '.join(METRICS)}")
    return names


def read_plan(text: str) -> EvalPlan:
    return EvalPlan(**json.loads(text))


def attempt_logs(store: Store) -> Path:
    return store.settings.home / "models" / "attempts"

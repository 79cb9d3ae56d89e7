"""Hyperparameter search: Optuna studies stored next to the catalog, trials run by scheduler jobs.

A trial job (one per worker, running trials back to back) asks the study for parameters, trains the reference
GPT on the training tokens version (streamed through the store's gate), reports the held-out loss every
``report_every`` steps and stops early when the study's pruner says so (``median``: below the median of earlier
trials at the same step; ``asha``: successive halving). Each trial records its data lineage (training and
held-out version ids, the code's hash) as user attributes, so a study's best configuration traces back to the
data it was found on.

Storage: on PostgreSQL the study lives in the catalog's database, in schema ``optuna``; on SQLite in a sibling
file (``catalog-optuna.db``). Optuna stamps its own ``alembic_version`` table, which would collide with the
catalog's migration heads if both shared one SQLite schema.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from granary.errors import MissingDependencyError
from granary.models.errors import ModelError

if TYPE_CHECKING:
    from granary.store import Store

log = logging.getLogger(__name__)
PRUNERS = ("median", "asha", "none")
SAMPLERS = ("tpe", "random", "grid")
PARAMS = {"lr": float, "d_model": int, "n_layers": int, "weight_decay": float, "batch_size": int}


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError("optuna", "models") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(kw_only=True, frozen=True)
class SearchSpec:
    """A search.

    Attributes:
        data: training tokens version (pinned to its id when the study starts).
        heldout: held-out tokens version for the objective (the mean next-token loss).
        space: parameter -> ``{"low", "high", "log"}`` or ``{"choices": [...]}``; parameters are those of
            :data:`PARAMS` (others of the architecture come from ``base``).
        base: the architecture (``ModelConfig`` fields) the parameters override.
        steps: optimiser steps per trial.
        report_every: steps between reports (and pruning decisions).
        eval_samples: held-out samples per report.
        pruner: ``median``, ``asha`` or ``none``.
        sampler: ``tpe``, ``random`` or ``grid`` (every space entry a ``choices`` list; each trial job takes a
            point no other trial took, so two studies on one grid try the same configurations).
        seed: sampler seed (``grid``, ``random``; TPE trial jobs draw their own).
        purpose: declared purpose of the data reads.
    """

    data: str
    heldout: str
    space: Mapping[str, Mapping[str, Any]]
    base: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 100
    report_every: int = 10
    eval_samples: int = 128
    pruner: str = "median"
    sampler: str = "tpe"
    seed: int = 0
    purpose: str = "pretraining"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.space) - set(PARAMS))
        if unknown:
            raise ModelError(f"search space names unknown parameter(s) {unknown}", hint=f"use {sorted(PARAMS)}")
        if self.pruner not in PRUNERS:
            raise ModelError(f"unknown pruner {self.pruner!r}", hint=f"one of {list(PRUNERS)}")
        if self.sampler not in SAMPLERS:
            raise ModelError(f"unknown sampler {self.sampler!r}", hint=f"one of {list(SAMPLERS)}")
        if self.sampler == "grid" and not all("choices" in s for s in self.space.values()):
            raise ModelError("the grid sampler needs a choices list for every parameter of the space")
        if self.steps < 1 or not 1 <= self.report_every <= self.steps:
            raise ModelError("steps must be >= 1 and report_every in [1, steps]")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SearchSpec:
        return cls(**json.loads(text))


def storage_url(catalog_url: str) -> tuple[str, dict[str, Any]]:
    """Optuna's storage URL and engine options for a catalog URL (see the module docstring)."""
    from sqlalchemy.engine import make_url

    url = make_url(catalog_url)
    if url.get_backend_name() == "sqlite":
        db = url.database or ""
        if db in ("", ":memory:"):
            raise ModelError("an in-memory SQLite catalog cannot hold a study", hint="use a file or PostgreSQL")
        stem, dot, ext = db.rpartition(".")
        return str(url.set(database=f"{stem}-optuna.{ext}" if dot else f"{db}-optuna")), {}
    if url.get_backend_name() == "postgresql":
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS optuna"))
        engine.dispose()
        return url.render_as_string(hide_password=False), {"connect_args": {"options": "-csearch_path=optuna"}}
    raise ModelError(f"studies are stored on SQLite or PostgreSQL, not {url.get_backend_name()}")


def open_storage(catalog_url: str) -> Any:
    optuna = _optuna()
    url, engine_kwargs = storage_url(catalog_url)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def make_pruner(name: str, *, report_every: int, steps: int) -> Any:
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=report_every)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=report_every, reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_sampler(spec: SearchSpec, *, seed: int | None) -> Any:
    optuna = _optuna()
    if spec.sampler == "grid":
        class JobGridSampler(optuna.samplers.GridSampler):  # type: ignore[name-defined]
            """Optuna's grid, without stopping the study when the grid is used up: that stop is only allowed
            inside ``Study.optimize``, and a trial job uses ask/tell (the number of trials bounds the search)."""

            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                return None

        return JobGridSampler({k: list(v["choices"]) for k, v in spec.space.items()}, seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def distributions(spec: SearchSpec) -> dict[str, Any]:
    optuna = _optuna()
    out: dict[str, Any] = {}
    for name, s in spec.space.items():
        if "choices" in s:
            out[name] = optuna.distributions.CategoricalDistribution(list(s["choices"]))
        elif PARAMS[name] is int:
            out[name] = optuna.distributions.IntDistribution(int(s["low"]), int(s["high"]), log=bool(s.get("log")))
        else:
            out[name] = optuna.distributions.FloatDistribution(float(s["low"]), float(s["high"]),
                                                               log=bool(s.get("log")))
    return out


def run_trial(store: Store, *, study: str, storage: str, spec_json: str, budget: int | None = None) -> int:
    """Trials (what a trial job runs): ask, train with reports and pruning, tell. Returns the exit code.

    Without ``budget`` one trial. With it, trials one after another until the study holds ``budget`` trials: a
    job pays the Python, torch and Optuna start once for several trials instead of once per trial (that start,
    which pruning cannot cut, was most of a pruned trial's time). The count and the ask happen under a file lock
    next to the catalog, so jobs running side by side never start more than ``budget`` trials between them.
    """
    optuna = _optuna()
    spec = SearchSpec.from_json(spec_json)
    st = optuna.load_study(study_name=study, storage=open_storage(storage), sampler=make_sampler(spec, seed=None),
                           pruner=make_pruner(spec.pruner, report_every=spec.report_every, steps=spec.steps))
    data, heldout = store.resolve(spec.data), store.resolve(spec.heldout)
    from granary.train.lineage import code_hash

    lineage = {"data": f"{data.dataset}@{data.id}", "heldout": f"{heldout.dataset}@{heldout.id}",
               "code": code_hash(), "purpose": spec.purpose}
    lock = store.settings.home / "models" / "studies" / f"{hashlib.sha256(study.encode()).hexdigest()[:16]}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(lock, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            if budget is not None and len(st.get_trials(deepcopy=False)) >= budget:
                return 0
            trial = st.ask(distributions(spec))
        trial.set_user_attr("lineage", lineage)
        try:
            value = _train(store, spec, trial, lineage["data"], lineage["heldout"])
        except optuna.TrialPruned:
            st.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except BaseException:
            st.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            st.tell(trial, value)
        if budget is None:
            return 0


def _train(store: Store, spec: SearchSpec, trial: Any, data_ref: str, heldout_ref: str) -> float:
    import torch

    from granary.models.artifact import model_config
    from granary.models.evaluate import shard_sums
    from granary.stream import StreamingDataset
    from granary.stream.source import TokenSource
    from granary.train.model import GPT, loss_fn

    p = dict(trial.params)
    arch = {**dict(spec.base), **{k: v for k, v in p.items() if k in ("d_model", "n_layers")}}
    cfg = model_config(arch)
    torch.manual_seed(spec.seed)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=float(p.get("lr", 1e-3)),
                            weight_decay=float(p.get("weight_decay", 0.0)))
    source = TokenSource(store, store.open_version(heldout_ref, purpose=spec.purpose), seq_len=cfg.context + 1)
    held = source.gather(np.arange(min(spec.eval_samples, source.num_samples), dtype=np.int64))
    ds = StreamingDataset(data_ref, batch_size=int(p.get("batch_size", 16)), seq_len=cfg.context + 1,
                          seed=spec.seed, rank=0, world_size=1, store=store, purpose=spec.purpose)
    step, value = 0, math.inf
    while step < spec.steps:
        for batch in ds:
            tokens = batch["tokens"].long()
            model.train()
            loss = loss_fn(model(tokens[:, :-1]), tokens[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % spec.report_every == 0 or step == spec.steps:
                model.eval()
                sums = shard_sums(model, held, batch_size=64)
                value = sums["nll"] / sums["tokens"]
                trial.report(value, step)
                if trial.should_prune():
                    raise _optuna().TrialPruned(f"pruned at step {step} (held-out loss {value:.4f})")
            if step >= spec.steps:
                break
    return value


def search(store: Store, spec: SearchSpec, *, study: str, trials: int, workers: int = 2,
           timeout_s: float = 3600.0, executor: str = "sched") -> dict[str, Any]:
    """Run ``trials`` trials of ``spec``, at most ``workers`` at a time; returns a summary.

    The study is created (or continued) in the catalog's Optuna storage under the name ``study``. ``executor``
    ``sched`` runs the trials in ``workers`` scheduler jobs, each taking trials until the budget; ``ray`` each
    trial as a Ray task with one CPU (a running Ray instance, or a local one started here), running the same
    trial code against the same storage.
    """
    optuna = _optuna()
    if trials < 1 or workers < 1:
        raise ValueError("trials and workers must be >= 1")
    if executor not in ("sched", "ray"):
        raise ModelError(f"unknown executor {executor!r}", hint="sched or ray")
    catalog_url = store.settings.catalog_url
    st = optuna.create_study(study_name=study, storage=open_storage(catalog_url), direction="minimize",
                             load_if_exists=True, sampler=make_sampler(spec, seed=spec.seed),
                             pruner=make_pruner(spec.pruner, report_every=spec.report_every, steps=spec.steps))
    st.set_user_attr("spec", json.loads(spec.to_json()))
    t0 = time.perf_counter()
    run = _ray_trials if executor == "ray" else _sched_trials
    failed = run(store, spec, study=study, trials=trials, workers=workers, timeout_s=timeout_s)
    return summary(st, seconds=time.perf_counter() - t0, failed_jobs=failed)


def _sched_trials(store: Store, spec: SearchSpec, *, study: str, trials: int, workers: int,
                  timeout_s: float) -> int:
    from granary.models.evaluate import job_env
    from granary.models.jobs import LocalJobs

    work = store.settings.home / "models" / "attempts"
    optuna = _optuna()
    budget = len(optuna.load_study(study_name=study, storage=open_storage(store.settings.catalog_url))
                 .get_trials(deepcopy=False)) + trials
    with LocalJobs(store.catalog, work, cpus=workers, tick_s=0.25) as jobs:
        argv = ["-m", "granary.models.worker", "trial", "--study", study, "--storage", store.settings.catalog_url,
                "--spec", spec.to_json(), "--budget", str(budget)]
        ids = [jobs.submit(jobs.spec(f"trial-{study}-{i}", argv, env=job_env(store)))
               for i in range(min(workers, trials))]
        rows = jobs.wait(ids, timeout_s=timeout_s)
    return sum(r.state != "succeeded" for r in rows.values())


def _ray_trial(env: dict[str, str], study: str, spec_json: str) -> int:
    """A trial in a Ray worker process (the store is opened from the caller's settings)."""
    import os

    os.environ.update(env)
    from granary.store import open_store

    return run_trial(open_store(), study=study, storage=env["GRANARY_CATALOG_URL"], spec_json=spec_json)


def _ray_trials(store: Store, spec: SearchSpec, *, study: str, trials: int, workers: int, timeout_s: float) -> int:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "ray") from None
    from granary.curate.executors.ray import init_ray
    from granary.models.evaluate import job_env

    if not ray.is_initialized():
        init_ray(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1)(_ray_trial)
    deadline = time.monotonic() + timeout_s
    pending: list[Any] = []
    codes: list[int] = []
    for _ in range(trials):
        if len(pending) >= workers:  # at most `workers` trials at once, whatever the cluster's size
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            codes += ray.get(done)
        pending.append(task.remote(job_env(store), study, spec.to_json()))
    codes += ray.get(pending, timeout=max(0.0, deadline - time.monotonic()))
    return sum(c != 0 for c in codes)


def summary(st: Any, *, seconds: float | None = None, failed_jobs: int = 0) -> dict[str, Any]:
    """A study's trials, states and best trial (with its data lineage)."""
    optuna = _optuna()
    trials = st.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(done, key=lambda t: t.value) if done else None
    return {"study": st.study_name, "trials": len(trials), "states": {k: v for k, v in states.items() if v},
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                               "lineage": best.user_attrs.get("lineage")},
            "seconds": seconds, "failed_jobs": failed_jobs}


def load_summary(store: Store, study: str) -> dict[str, Any]:
    optuna = _optuna()
    try:
        st = optuna.load_study(study_name=study, storage=open_storage(store.settings.catalog_url))
    except KeyError:
        raise ModelError(f"no study named {study!r}", hint="start one with `granary tune SPEC --study NAME`") from None
    return summary(st)

"""The asynchronous parameter-server mode (``parallel.mode: param_server``) over ``torch.distributed.rpc``.

Rank 0 hosts the server (:class:`ParamServer`: the parameters, the optimiser, the loader and the checkpoints)
and also works; every rank runs the same worker loop: take work (the parameters at some version and the next
batch), compute the gradient, push it and take the next work in one RPC (:func:`_exchange`, TensorPipe over
CPU). Work is handed out on demand, so a straggler takes fewer batches instead of holding the others up. The
update rules (staleness bound, rejections, ties) are :mod:`granary.train.param_server`'s.

Checkpoints are the server's: every ``checkpoint.every`` versions, under the server's lock, the parameters,
the optimiser, the loader's position and the batches handed out but not yet applied (given out again first
after a resume) go through :class:`~granary.train.checkpoint.CheckpointManager` like any other checkpoint. A
resume is consistent (every sample's gradient is applied once, from parameters at most ``ps_staleness``
versions old) but not bit-identical: which gradient lands first depends on timing.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from granary.errors import TrainError
from granary.train import chaos
from granary.train.checkpoint import CheckpointManager
from granary.train.dist import Dist
from granary.train.fault import StepWatchdog
from granary.train.lineage import code_hash, run_lineage
from granary.train.metrics import MetricsLogger
from granary.train.model import GPT, loss_fn
from granary.train.param_server import Drained, Gradient, ParamServerState, flat_grad, load_flat
from granary.train.recipe import Recipe
from granary.train.trainer import FitResult, lr_at, rng_state, seed_all, set_rng_state

log = logging.getLogger(__name__)
_SERVER: ParamServer | None = None  # rank 0's server, reached by the RPC handler below


@dataclass(frozen=True)
class Work:
    """What a worker computes next: the parameters at ``version`` and one batch."""

    version: int
    params: torch.Tensor
    batch_id: int
    tokens: torch.Tensor


def _exchange(worker_id: int, base_version: int, grad: torch.Tensor | None, loss: float,
              batch_id: int) -> Work | None:
    """The RPC a worker calls on rank 0: push a gradient (or None at the start), get the next work (or None)."""
    if _SERVER is None:
        raise TrainError("rank 0 has no parameter server (parallel.mode differs between ranks?)")
    return _SERVER.exchange(worker_id, base_version, grad, loss, batch_id)


class ParamServer:
    """Rank 0's side: the versioned parameters, the work queue, metrics and checkpoints."""

    def __init__(self, recipe: Recipe, *, store: Any, model: nn.Module, run_dir: Path) -> None:
        self.recipe = recipe
        self.store = store
        self.model = model
        self.run_dir = run_dir
        r = recipe
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=r.optim.lr, weight_decay=r.optim.weight_decay,
                                           betas=(r.optim.beta1, r.optim.beta2))
        params = [p for p in model.parameters() if p.requires_grad]
        self.state = ParamServerState(params, self.optimizer, staleness_bound=r.parallel.ps_staleness,
                                      lr_at=lambda v: lr_at(r, v))
        self.ckpt = CheckpointManager(store, r.checkpoint_dataset, dist=Dist(), purpose=r.data.purpose,
                                      run_dir=run_dir, async_save=r.checkpoint.async_save,
                                      keep_last=r.checkpoint.keep_last, keep_every=r.checkpoint.keep_every)
        self.metrics = MetricsLogger(run_dir, enabled=True)
        self.lock = threading.Lock()
        self.reissue: collections.deque[tuple[int, torch.Tensor]] = collections.deque()
        self.in_flight: dict[int, torch.Tensor] = {}
        self.next_batch_id = 0
        self.updates_by_worker: collections.Counter[int] = collections.Counter()
        self.comm_bytes = 0  # payload over the network (gradients in, parameters out) since the last log record
        self.comm_total = 0
        self.checkpoints: list[str] = []
        self.segments: list[dict[str, Any]] = []
        self.resumed_from: int | None = None
        self.final_loss: float | None = None
        self.last_t = time.perf_counter()

    # -- start ----------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Resume from the newest checkpoint (if any) and open the data."""
        from granary.stream import StreamingDataset

        r = self.recipe
        self.ckpt.ensure_dataset(description=f"checkpoints of training run {r.name}")
        latest = self.ckpt.latest() if r.checkpoint.resume else None
        pinned, loader = None, None
        if latest is not None:
            pinned, loader = self._resume(latest)
        if pinned is None:
            pinned = self.store.resolve(r.data.dataset).ref
        self.pinned = pinned
        self.ds = StreamingDataset(pinned, batch_size=r.data.batch_size, seq_len=r.model.context + 1,
                                   seed=r.data.seed, shuffle=r.data.shuffle, rank=0, world_size=1,
                                   store=self.store, purpose=r.data.purpose)
        if loader is not None:
            self.ds.load_state_dict(loader)
        self.start_step, self.start_position = self.state.version, self.ds.position
        self.batches = iter(self.ds)

    def _resume(self, latest: Any) -> tuple[str, dict[str, Any]]:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        r = self.recipe
        meta = self.store.manifest(latest).metadata
        if meta.get("model_hash") != r.model_hash():
            raise TrainError(f"checkpoint {latest.ref} was saved from another model shape "
                             f"(model {meta.get('model')}); this recipe's model is {r.to_dict()['model']}",
                             hint=f"use another checkpoint.dataset than {r.checkpoint_dataset}, or the same model")
        if meta.get("mode") != "param_server":
            raise TrainError(f"checkpoint {latest.ref} was not saved by a param_server run",
                             hint=f"use another checkpoint.dataset than {r.checkpoint_dataset}")
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        loaded = self.ckpt.load(latest.ref, state)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        extra = loaded.extra or {}
        if "rng" in extra:
            set_rng_state(extra["rng"])
        self.reissue.extend((int(b), t) for b, t in extra.get("reissue", []))
        self.next_batch_id = int(extra.get("next_batch_id", 0))
        self.state.version = self.resumed_from = int(loaded.metadata["step"])
        self.segments = list(self.store.manifest(latest).lineage.get("segments", []))
        log.warning("resumed %s from version %d (checkpoint %s)", r.name, self.state.version, latest.id)
        return loaded.metadata["data"]["ref"], loaded.metadata["loader"]

    # -- the exchange ---------------------------------------------------------------------------------------
    def exchange(self, worker_id: int, base_version: int, grad: torch.Tensor | None, loss: float,
                 batch_id: int) -> Work | None:
        steps = self.recipe.steps
        remote = worker_id != 0
        if grad is not None:
            self.state.submit(Gradient(worker_id, base_version, grad, loss, batch_id))
        with self.lock:
            if grad is not None:
                if remote:
                    self.comm_bytes += _nbytes(grad)
                self._handle(self.state.drain(stop_at=steps))
            if self.state.version >= steps:
                return None
            work = self._work()
            if remote:
                self.comm_bytes += _nbytes(work.params) + _nbytes(work.tokens)
            return work

    def _work(self) -> Work:
        if self.reissue:
            batch_id, tokens = self.reissue.popleft()
        else:
            try:
                batch = next(self.batches)
            except StopIteration:  # end of a pass: the next one starts at the new epoch
                self.batches = iter(self.ds)
                batch = next(self.batches)
            batch_id, tokens = self.next_batch_id, batch["tokens"]
            self.next_batch_id += 1
        self.in_flight[batch_id] = tokens
        version, params = self.state.snapshot()
        return Work(version, params, batch_id, tokens)

    def _handle(self, drained: Drained) -> None:
        # rejected batches are computed again on fresh parameters, before any new batch, in their order
        self.reissue.extendleft(reversed([(g.batch_id, self.in_flight.pop(g.batch_id)) for g in drained.rejected]))
        for g in drained.dropped:
            self.in_flight.pop(g.batch_id, None)
        r = self.recipe
        for applied in drained.applied:
            for b, w in zip(applied.batch_ids, applied.workers, strict=True):
                self.in_flight.pop(b, None)
                self.updates_by_worker[w] += 1
            v = applied.version
            self.final_loss = applied.loss
            if v % r.log_every == 0 or v == r.steps:
                self._log(applied, len(drained.rejected))
            if (r.checkpoint.every and v % r.checkpoint.every == 0) or v == r.steps:
                self.checkpoints.append(self._save(v))

    def _log(self, applied: Any, rejected_now: int) -> None:
        r = self.recipe
        now = time.perf_counter()
        elapsed, self.last_t = now - self.last_t, now
        self.comm_total += self.comm_bytes
        samples = r.data.batch_size * len(applied.batch_ids)
        self.metrics.log({"step": applied.version, "loss": applied.loss, "learning_rate": lr_at(r, applied.version - 1),
                          "staleness": max(applied.staleness), "staleness_all": applied.staleness,
                          "workers": applied.workers, "rejected": rejected_now,
                          "rejected_total": self.state.rejected_total, "comm_bytes": self.comm_bytes,
                          "step_seconds": elapsed, "tokens_per_second": samples * r.model.context / max(elapsed, 1e-9),
                          "updates_by_worker": {str(k): v for k, v in sorted(self.updates_by_worker.items())},
                          "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))})
        self.comm_bytes = 0

    def _save(self, version: int) -> str:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        r = self.recipe
        loader = self.ds.state_dict()
        lineage = run_lineage(r, pinned=self.pinned, loader=loader, segments=self.segments,
                              start_step=self.start_step, start_position=self.start_position, step=version)
        meta = {"run": r.name, "model_hash": r.model_hash(), "model": r.to_dict()["model"], "recipe": r.to_dict(),
                "data": {"ref": self.pinned, "versions": loader["versions"]}, "loader": loader, "code": code_hash(),
                "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), "grad_scaler": False,
                "mode": "param_server", "rejected_total": self.state.rejected_total}
        pending = sorted([*self.reissue, *self.in_flight.items()], key=lambda item: item[0])
        extra = {"rng": rng_state(), "reissue": [(b, t.clone()) for b, t in pending],
                 "next_batch_id": self.next_batch_id}
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return self.ckpt.save(version, {"model": model_sd, "optim": optim_sd}, extra=extra, metadata=meta,
                              lineage=lineage)

    def close(self) -> None:
        self.checkpoints.append(self.ckpt.drain())
        self.metrics.close()


# -- every rank ------------------------------------------------------------------------------------------------
def work_loop(call: Any, model: nn.Module, recipe: Recipe, rank: int, *, run_dir: Path | None = None,
              watchdog: StepWatchdog | None = None) -> int:
    """Take work, compute its gradient, push it; until the server says done. Returns the gradients computed.
    (A ``GRANARY_TRAIN_CHAOS`` fault at step ``n`` fires after this rank's ``n``-th gradient.)"""
    params = [p for p in model.parameters() if p.requires_grad]
    clip = recipe.optim.grad_clip
    work = call(rank, -1, None, 0.0, -1)
    done = 0
    while work is not None:
        load_flat(params, work.params)
        x, y = work.tokens[:, :-1], work.tokens[:, 1:]
        loss = loss_fn(model(x), y)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        grad = flat_grad(params)
        for p in params:
            p.grad = None
        chaos.maybe_slow(rank)
        done += 1
        if watchdog is not None:
            watchdog.beat(done)
        if run_dir is not None:
            chaos.maybe_fail("step", done, rank, run_dir)
        work = call(rank, work.version, grad, float(loss.detach()), work.batch_id)
    return done


class ParamServerRun:
    """One rank of a ``param_server`` run (see the module docstring)."""

    def __init__(self, recipe: Recipe, *, store: Any = None, model: nn.Module | None = None,
                 run_dir: Path) -> None:
        self.recipe = recipe
        self.store = store
        self.model = model
        self.run_dir = run_dir

    def fit(self) -> FitResult:
        global _SERVER
        r = self.recipe
        torch.set_num_threads(r.threads)
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        seed_all(r.seed)
        model = self.model if self.model is not None else GPT(r.model)
        server = None
        if rank == 0:
            if self.store is None:
                from granary.store import open_store

                self.store = open_store()
            server = _SERVER = ParamServer(r, store=self.store, model=model, run_dir=self.run_dir)
            server.open()
            worker_model = GPT(r.model) if self.model is None else _clone(model)
        else:
            worker_model = model
        watchdog = StepWatchdog(r.fault.step_timeout_s, self.run_dir).start()
        rpc = _init_rpc(rank, world, r.fault.collective_timeout_s) if world > 1 else None
        try:
            if rpc is None:
                call = _exchange
            else:
                call = _remote_call(rpc) if rank else _exchange
            computed = work_loop(call, worker_model, r, rank, run_dir=self.run_dir, watchdog=watchdog)
        finally:
            watchdog.stop()
            if rpc is not None:
                rpc.shutdown()  # waits for every rank's outstanding calls
            if server is not None:
                server.close()
                _SERVER = None
        if server is None:
            return FitResult(steps=r.steps, resumed_from=None, final_loss=None, run_dir=str(self.run_dir))
        log.info("param_server run %s: %d gradients computed here, %d rejected in all, updates by worker %s",
                 r.name, computed, server.state.rejected_total, dict(server.updates_by_worker))
        return FitResult(steps=server.state.version, resumed_from=server.resumed_from, final_loss=server.final_loss,
                         checkpoints=[c for c in server.checkpoints if c], run_dir=str(self.run_dir),
                         restarts=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _clone(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _remote_call(rpc: Any) -> Any:
    def call(*args: Any) -> Any:
        return rpc.rpc_sync("ps0", _exchange, args=args)

    return call


def _init_rpc(rank: int, world: int, timeout_s: float) -> Any:
    """Start TensorPipe RPC over the job's key-value store (prefixed per torchrun attempt, as the process group's)."""
    import importlib

    import torch.distributed.rpc as rpc

    from granary.train.dist import _attempt_store

    def handler(url: str, timeout: timedelta = timedelta(seconds=timeout_s), **kwargs: Any) -> Any:
        store = _attempt_store(rank, world, timedelta(seconds=timeout_s))
        yield (torch.distributed.PrefixStore("ps", store), rank, world)

    rdzv = importlib.import_module("torch.distributed.rendezvous")  # the module (the package exports a function)
    with contextlib.suppress(RuntimeError):  # registered by an earlier run in this process: same rank and world
        rdzv.register_rendezvous_handler("granaryps", handler)
    opts = rpc.TensorPipeRpcBackendOptions(num_worker_threads=max(8, 2 * world), rpc_timeout=timeout_s,
                                           init_method="granaryps://")
    rpc.init_rpc(f"ps{rank}", rank=rank, world_size=world, rpc_backend_options=opts)
    return rpc

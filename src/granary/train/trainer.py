"""Trainer / fit: the common case end to end, on one process or under torchrun.

Data comes from a tokens version through :class:`granary.stream.StreamingDataset` (pinned to a version id at the
run's first start); checkpoints are versions of the run's ``checkpoint`` dataset (see
:mod:`granary.train.checkpoint`). On start the trainer resumes from the newest complete checkpoint: model,
optimiser, every RNG and the loader's position, so a restarted run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from granary.errors import TrainError
from granary.train import chaos
from granary.train.amp import LossScaler
from granary.train.checkpoint import CheckpointManager
from granary.train.comm import CommCounter
from granary.train.diloco import DiLoCo
from granary.train.dist import Dist
from granary.train.fault import EXIT_PREEMPTED, LossGuard, Preemption, StepWatchdog, read_faults
from granary.train.lineage import code_hash, run_lineage
from granary.train.metrics import MetricsLogger, MonitorPush
from granary.train.model import GPT, loss_fn
from granary.train.noise import NoiseScale
from granary.train.parallel import (
    STATELESS_HOOKS,
    autocast_dtype,
    settle_ddp_buckets,
    wrap_ddp,
    wrap_fsdp,
    wrap_fsdp_tp,
    wrap_tp,
)
from granary.train.parallel import clip_grad_norm as clip_params
from granary.train.pipeline import Pipeline, clip_grad_norm
from granary.train.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a finished ``fit`` reports (on every rank)."""

    steps: int
    resumed_from: int | None
    final_loss: float | None
    checkpoints: list[str] = field(default_factory=list)
    run_dir: str = ""
    restarts: int = 0


def lr_at(recipe: Recipe, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based): linear warmup, then cosine or constant."""
    o = recipe.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    span = max(1, recipe.steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def default_run_dir(recipe: Recipe) -> Path:
    if recipe.run_dir:
        return Path(recipe.run_dir)
    from granary.config import Settings

    return Settings.from_env().home / "train" / recipe.name


class Trainer:
    """Train the reference GPT (or ``model``) as a recipe says.

    Args:
        recipe: the run's configuration.
        store: the store (default ``open_store()``); data and checkpoints go only through its methods.
        model: a module taking ``(batch, context)`` token ids to logits (default: :class:`GPT` of ``recipe.model``).
    """

    def __init__(self, recipe: Recipe, *, store: Any = None, model: nn.Module | None = None) -> None:
        self.recipe = recipe
        self._store = store
        self._model = model
        self.run_dir = default_run_dir(recipe)

    # -- setup ----------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        r = self.recipe
        torch.set_num_threads(r.threads)
        self.dist = Dist.init(timeout_s=r.fault.collective_timeout_s)
        if self._store is None:
            from granary.store import open_store

            self._store = open_store()
        self.store = self._store
        seed_all(r.seed)  # identical initial weights on every rank
        self.raw_model = self._model if self._model is not None else GPT(r.model)
        self.comm = CommCounter()
        self.pipeline: Pipeline | None = None
        self.diloco: DiLoCo | None = None
        self.model = self._parallelize(self.raw_model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=r.optim.lr, weight_decay=r.optim.weight_decay,
                                           betas=(r.optim.beta1, r.optim.beta2))
        self.scaler = LossScaler(r.parallel, self.mode, self.dist, "cuda" if torch.cuda.is_available() else "cpu")
        self.ckpt = CheckpointManager(self.store, r.checkpoint_dataset, dist=self.dist, purpose=r.data.purpose,
                                      run_dir=self.run_dir, async_save=r.checkpoint.async_save,
                                      keep_last=r.checkpoint.keep_last, keep_every=r.checkpoint.keep_every)
        self.metrics = MetricsLogger(self.run_dir, enabled=self.dist.rank == 0)
        self.monitor = MonitorPush(rank=self.dist.rank, job=os.environ.get("GRANARY_JOB_ID") or f"train:{r.name}")
        self.guard = LossGuard(r.fault.nan_policy, r.fault.spike_factor)
        if self.mode == "diloco":
            self.diloco = DiLoCo(self.model, r.parallel, self.dist, self.comm)
        self.noise = NoiseScale(self.raw_model, self.dist, local_batch=r.data.batch_size,
                                enabled=self.mode == "ddp" and r.parallel.grad_accum == 1)
        self.attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    def _parallelize(self, model: nn.Module) -> nn.Module:
        p = self.recipe.parallel
        self.mode = p.mode if self.dist.world_size > 1 else "single"
        if self.mode == "pp":
            if not isinstance(model, GPT):
                raise TrainError("parallel.mode pp cuts the reference GPT into stages; pass no model of your own")
            self.pipeline = Pipeline(model, p, self.dist, batch_size=self.recipe.data.batch_size)
            model = self.pipeline.module
        elif self.mode == "ddp":
            model = wrap_ddp(model, p, self.dist, self.comm)
        elif self.mode == "fsdp":
            model = wrap_fsdp(model, p, self.dist)
        elif self.mode == "tp":
            model = wrap_tp(model, p, self.dist)
        elif self.mode == "fsdp_tp":
            model = wrap_fsdp_tp(model, p, self.dist)
        if p.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        return model

    @property
    def data_parallel(self) -> tuple[int, int]:
        """(rank, ranks) among the replicas that read different batches (tensor/pipeline ranks share one)."""
        if self.mode == "fsdp_tp":  # one replica per row of the (dp, tp) mesh
            tp = self.recipe.parallel.tp_size
            return self.dist.rank // tp, self.dist.world_size // tp
        return (0, 1) if self.mode in ("tp", "pp") else (self.dist.rank, self.dist.world_size)

    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        if self.diloco is not None:  # the global (synchronised) parameters; local states go in the extras
            names = [n for n, p in self.model.named_parameters() if p.requires_grad]
            state: dict[str, Any] = {"model": dict(zip(names, self.diloco.global_params, strict=True))}
        else:
            model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
            state = {"model": model_sd, "optim": optim_sd}
        if self.scaler.enabled:  # the same on every rank (the inf flag is agreed over the job)
            state["scaler"] = self.scaler.state_dict()
        return state

    def _load_state(self, state: dict[str, Any], extra: dict[str, Any] | None) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        self.scaler.load_state_dict(state.get("scaler") or {})
        if self.diloco is None:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
        elif extra is not None:  # the same world size: every rank's own local model and optimisers
            self.model.load_state_dict(extra["local"])
            self.optimizer.load_state_dict(extra["inner"])
            self.diloco.outer.load_state_dict(extra["outer"])
            self.diloco.load_pending(extra.get("pending"))
        else:  # another world size: start the local models from the global parameters
            with torch.no_grad():
                for p, g in zip(self.diloco.params, self.diloco.global_params, strict=True):
                    p.copy_(g)

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"rng": rng_state()}
        if self.diloco is not None:
            extra.update(local=self.model.state_dict(), inner=self.optimizer.state_dict(),
                         outer=self.diloco.outer.state_dict(), pending=self.diloco.pending_state())
        return extra

    # -- data -----------------------------------------------------------------------------------------------
    def _open_data(self, pinned: str | None) -> Any:
        from granary.stream import StreamingDataset

        r = self.recipe
        if pinned is None:
            pinned = self.dist.broadcast_object(self.store.resolve(r.data.dataset).ref if self.dist.rank == 0 else "")
        rank, ranks = self.data_parallel
        ds = StreamingDataset(pinned, batch_size=r.data.batch_size, seq_len=r.model.context + 1, seed=r.data.seed,
                              shuffle=r.data.shuffle, rank=rank, world_size=ranks, store=self.store,
                              purpose=r.data.purpose)
        return ds, pinned

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train to ``recipe.steps`` optimiser steps, resuming from the latest checkpoint if there is one."""
        if self.recipe.parallel.mode == "param_server":
            from granary.train.ps_run import ParamServerRun

            return ParamServerRun(self.recipe, store=self._store, model=self._model, run_dir=self.run_dir).fit()
        self._setup()
        r = self.recipe
        preempt = Preemption().install()
        watchdog = StepWatchdog(r.fault.step_timeout_s, self.run_dir).start()
        try:
            return self._fit(preempt, watchdog)
        except BaseException:
            self.ckpt.abandon()
            raise
        finally:
            watchdog.stop()
            preempt.uninstall()
            self.metrics.close()
            self.monitor.close()
            self.dist.close()

    def _resume(self) -> tuple[int, str | None, dict[str, Any] | None, str | None]:
        r = self.recipe
        self.ckpt.ensure_dataset(description=f"checkpoints of training run {r.name}")
        latest = self.ckpt.latest() if r.checkpoint.resume else None
        self._segments: list[dict[str, Any]] = []
        if latest is None:
            return 0, None, None, None
        meta = self.store.manifest(latest).metadata
        if meta.get("model_hash") != r.model_hash():
            raise TrainError(f"checkpoint {latest.ref} was saved from another model shape "
                             f"(model {meta.get('model')}); this recipe's model is {r.to_dict()['model']}",
                             hint=f"use another checkpoint.dataset than {r.checkpoint_dataset}, or the same model")
        state = self._state()
        if not meta.get("grad_scaler"):  # saved without fp16: the scale starts afresh
            state.pop("scaler", None)
        loaded = self.ckpt.load(latest.ref, state)
        same_world = loaded.extra is not None and loaded.metadata.get("world_size") == self.dist.world_size
        self._load_state(state, loaded.extra if same_world else None)
        if same_world and loaded.extra is not None:
            set_rng_state(loaded.extra["rng"])
        self._segments = list(self.store.manifest(latest).lineage.get("segments", []))
        return int(loaded.metadata["step"]), loaded.metadata["data"]["ref"], loaded.metadata["loader"], latest.id

    def _fit(self, preempt: Preemption, watchdog: StepWatchdog) -> FitResult:
        r = self.recipe
        step, pinned, loader_state, resumed_id = self._resume()
        ds, pinned = self._open_data(pinned)
        if loader_state is not None:
            ds.load_state_dict(loader_state)
        start_step, start_position = step, ds.position
        self._record_start(step if resumed_id else None, resumed_id)
        amp = autocast_dtype(r.parallel)
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        flops = self.raw_model.flops_per_token() if isinstance(self.raw_model, GPT) else None
        rank_tokens = r.data.batch_size * r.model.context * r.parallel.grad_accum  # this rank's replica, per step
        tokens_per_step = rank_tokens * self.data_parallel[1]
        batches = iter(ds)
        checkpoints: list[str] = []
        final_loss = None
        self.model.train()
        if resumed_id and self.mode == "ddp" and r.parallel.comm_hook in STATELESS_HOOKS:
            device = next(self.raw_model.parameters()).device
            zeros = torch.zeros((r.data.batch_size, r.model.context + 1), dtype=torch.long, device=device)
            settle_ddp_buckets(self.model, zeros, loss_fn, self.comm, amp)
            self.noise.discard()  # the throw-away backward is no sample of the gradient noise
        while step < r.steps:
            t0 = time.perf_counter()
            data_s, loss_sum = 0.0, 0.0
            for micro in range(r.parallel.grad_accum):
                d0 = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:  # end of a pass: the next one starts at the new epoch
                    batches = iter(ds)
                    batch = next(batches)
                data_s += time.perf_counter() - d0
                tokens = batch["tokens"]
                x, y = tokens[:, :-1], tokens[:, 1:]
                if self.pipeline is not None:
                    loss_sum = self.pipeline.step(x, y)
                    continue
                last = micro == r.parallel.grad_accum - 1
                no_sync = getattr(self.model, "no_sync", None)
                sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
                cast = torch.autocast(device_type, dtype=amp) if amp is not None else contextlib.nullcontext()
                with sync:
                    with cast:
                        loss = loss_fn(self.model(x), y) / r.parallel.grad_accum
                    self.scaler.scale(loss).backward()
                loss_sum += float(loss.detach())
            chaos.maybe_slow(self.dist.rank)  # a straggler drill (GRANARY_TRAIN_SLOW)
            self.scaler.unscale(self.optimizer)
            grad_norm = self._clip()
            self.noise.update(grad_norm)
            mean_loss, skew, stop = self._reduce(loss_sum, time.perf_counter() - t0, preempt.requested)
            if self.pipeline is not None:
                mean_loss = loss_sum  # already the pipeline's loss on every rank
            if self.guard.bad(mean_loss, step):
                self.scaler.skip()
                self.optimizer.zero_grad(set_to_none=True)
            else:
                for g in self.optimizer.param_groups:
                    g["lr"] = lr_at(r, step)
                self.scaler.step(self.optimizer)  # skipped (and the scale halved) if a gradient overflowed
                self.optimizer.zero_grad(set_to_none=True)
            step += 1
            if self.diloco is not None:
                self.diloco.after_step(step, last=step == r.steps)
            final_loss = mean_loss
            watchdog.beat(step)
            chaos.maybe_fail("step", step, self.dist.rank, self.run_dir)
            elapsed = time.perf_counter() - t0
            if step % r.log_every == 0 or step == r.steps:
                tps = tokens_per_step / elapsed
                record = {"step": step, "loss": mean_loss, "grad_norm": grad_norm, "learning_rate": lr_at(r, step - 1),
                          "tokens_per_second": tps, "step_seconds": elapsed, "data_seconds": data_s,
                          "step_skew_seconds": skew, "mfu": _mfu(flops, tps), "comm_bytes": self.comm.take(),
                          "attempt": self.attempt, "tokens_total": step * rank_tokens}
                if self.scaler.enabled:
                    record.update(loss_scale=self.scaler.scale_value, skipped_steps=self.scaler.skipped)
                self.metrics.log(record)
                self.monitor.offer(record)  # every rank: its own step time and data wait
            if r.data.eval_dataset and r.data.eval_every and step % r.data.eval_every == 0:
                self._evaluate(step)
            if (r.checkpoint.every and step % r.checkpoint.every == 0) or step == r.steps or stop:
                checkpoints.append(self._save(step, ds, pinned, start_step, start_position))
            if stop:
                self.ckpt.drain()
                self.dist.barrier()
                raise SystemExit(EXIT_PREEMPTED)
        checkpoints.append(self.ckpt.drain())
        checkpoints = [c for c in checkpoints if c]
        return FitResult(steps=step, resumed_from=start_step if resumed_id else None, final_loss=final_loss,
                         checkpoints=checkpoints, run_dir=str(self.run_dir), restarts=self.attempt)

    def _clip(self) -> float:
        clip = self.recipe.optim.grad_clip
        if self.pipeline is not None:
            return clip_grad_norm(list(self.model.parameters()), clip, self.dist)
        return clip_params(list(self.model.parameters()), clip)

    def _reduce(self, loss: float, seconds: float, stop: bool) -> tuple[float, float, bool]:
        """Mean loss over ranks, the slowest minus the fastest rank's step time, and whether any rank was asked
        to stop (SIGTERM): two small collectives per step."""
        if not self.dist.enabled:
            return loss, 0.0, stop
        total = self.dist.all_reduce([loss], op="sum")[0]
        mx = self.dist.all_reduce([seconds, -seconds, 1.0 if stop else 0.0], op="max")
        return total / self.dist.world_size, mx[0] + mx[1], bool(mx[2])

    def _save(self, step: int, ds: Any, pinned: str, start_step: int, start_position: int) -> str:
        r = self.recipe
        t0 = time.perf_counter()
        loader = ds.state_dict()
        lineage = run_lineage(r, pinned=pinned, loader=loader, segments=self._segments, start_step=start_step,
                              start_position=start_position, step=step)
        meta = {"run": r.name, "model_hash": r.model_hash(), "model": r.to_dict()["model"],
                "recipe": r.to_dict(), "data": {"ref": pinned, "versions": loader["versions"]}, "loader": loader,
                "code": code_hash(), "attempt": self.attempt, "grad_scaler": self.scaler.enabled}
        vid = self.ckpt.save(step, self._state(), extra=self._extra(), metadata=meta, lineage=lineage)
        self.metrics.set(checkpoint_seconds=time.perf_counter() - t0)
        return vid

    def _evaluate(self, step: int) -> None:
        from granary.stream import StreamingDataset

        r = self.recipe
        assert r.data.eval_dataset is not None
        ds = StreamingDataset(r.data.eval_dataset, batch_size=r.data.batch_size, seq_len=r.model.context + 1,
                              seed=0, shuffle="none", rank=self.dist.rank, world_size=self.dist.world_size,
                              store=self.store, purpose=r.data.purpose)
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for i, batch in enumerate(ds):
                if i >= r.data.eval_batches:
                    break
                t = batch["tokens"]
                total += float(loss_fn(self.model(t[:, :-1]), t[:, 1:]))
                n += 1
        self.model.train()
        s = self.dist.all_reduce([total, float(n)])
        if s[1]:
            mean = s[0] / s[1]
            self.metrics.log({"step": step, "eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0))})

    def _record_start(self, resumed_from: int | None, version: str | None) -> None:
        if self.dist.rank != 0:
            return
        import json

        faults = [f for f in read_faults(self.run_dir) if f.get("attempt") == self.attempt - 1]
        cause = faults[-1]["cause"] if faults else ("a worker exited (killed or crashed; no reason recorded)"
                                                    if self.attempt else "start")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "restarts.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), "attempt": self.attempt, "cause": cause,
                                "resumed_from": resumed_from, "checkpoint": version}) + "\n")
        self.metrics.set(restarts_total=self.attempt)
        if resumed_from is not None:
            from granary.sched.checkpoint import report_resumed

            report_resumed(resumed_from)  # shown by the scheduler for a `train` job (no-op outside one)
            log.warning("resumed %s from step %d (checkpoint %s)", self.recipe.name, resumed_from, version)


def _mfu(flops_per_token: float | None, tokens_per_second: float) -> float | None:
    peak = float(os.environ.get("GRANARY_PEAK_FLOPS", "0") or 0)
    if not flops_per_token or peak <= 0:
        return None
    return flops_per_token * tokens_per_second / peak


def fit(recipe: Recipe, **kwargs: Any) -> FitResult:
    """``Trainer(recipe, **kwargs).fit()``."""
    return Trainer(recipe, **kwargs).fit()

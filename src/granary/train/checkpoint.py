"""Checkpoints as store versions: ``torch.distributed.checkpoint`` files published through the store's commit.

Save, on every rank of the job:

1. ``dcp.save`` writes the sharded state (model, optimiser, scheduler) into a staging folder; each rank also
   writes ``extra-<rank>.pt`` (its RNG states);
2. each rank publishes the files it wrote with :meth:`Store.write_blob` (content addressed, checksummed,
   invisible: nothing references them yet);
3. rank 0 gathers the entries and commits one version of the run's ``checkpoint`` dataset whose metadata holds
   the step, the loader's state and the lineage. The commit is the catalog's compare-and-swap of the branch head.

A crash before step 3 leaves no visible checkpoint (the published objects are unreferenced and ``gc`` removes
them), so the branch head is always the latest complete checkpoint. Load reads the version's files through
:meth:`Store.open_version` (authorised, audited) into a local folder and hands them to ``dcp.load``, which
reshards: a checkpoint saved at world size N loads at world size M.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

from granary.errors import NotFoundError, TrainError
from granary.train import chaos
from granary.train.dist import Dist

if TYPE_CHECKING:
    from granary.store import Store
    from granary.store.model import VersionInfo

log = logging.getLogger(__name__)
EXTRA = "extra-{rank}.pt"


@dataclass(frozen=True)
class _Pending:
    """An asynchronous save whose files are being written."""

    step: int
    folder: Path | None  # None: written and committed by the background thread
    future: Any
    metadata: dict[str, Any]
    lineage: dict[str, Any]


@dataclass(frozen=True)
class Loaded:
    """A checkpoint read back: its version, its metadata (step, loader, lineage) and this rank's extras."""

    version_id: str
    metadata: dict[str, Any]
    extra: dict[str, Any] | None


class CheckpointManager:
    """Save and load a run's checkpoints as versions of one ``checkpoint`` dataset.

    Args:
        store: the store (every read and write goes through its methods).
        dataset: the checkpoint dataset (created on first use).
        dist: this process's place in the job.
        purpose: declared purpose when reading checkpoints back.
        run_dir: the run's folder (fault-injection markers, see :mod:`granary.train.chaos`).
    """

    def __init__(self, store: Store, dataset: str, *, dist: Dist, purpose: str | None = None,
                 run_dir: Path | None = None, async_save: bool = False, keep_last: int = 0,
                 keep_every: int = 0) -> None:
        self.store = store
        self.dataset = dataset
        self.dist = dist
        self.purpose = purpose
        self.run_dir = run_dir
        self.staging_root = store.settings.home / "staging"
        self.async_save = async_save
        self.keep_last, self.keep_every = keep_last, keep_every
        self.retention: dict[str, Any] = {}  # what the last retention pass did (rank 0)
        self._pending: _Pending | None = None
        self._buffers: tuple[Any, list[torch.Tensor | None]] | None = None  # reused staging buffers (one process)
        self._planner = DefaultSavePlanner(enable_plan_caching=True)  # the same layout every save: plan once
        self._group: Any = None
        if async_save and dist.enabled:  # the background save's collectives get a group of their own
            import torch.distributed as tdist

            self._group = tdist.new_group(backend="gloo")

    def ensure_dataset(self, *, description: str = "") -> None:
        if self.dist.rank == 0:
            self.store.create_dataset(self.dataset, kind="checkpoint", description=description, exist_ok=True)
        self.dist.barrier()

    def latest(self) -> VersionInfo | None:
        """The newest complete checkpoint (the dataset's branch head), or None."""
        try:
            return self.store.resolve(self.dataset)
        except NotFoundError:
            return None

    # -- save ---------------------------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], *, extra: dict[str, Any], metadata: dict[str, Any],
             lineage: dict[str, Any]) -> str:
        """Write, publish and commit a checkpoint; returns the new version id (on every rank).

        With ``async_save`` the call returns ``""`` once the state is copied, and returns the version id of the
        previous asynchronous save (which it waits for first). In one process the copy goes into CPU buffers
        reused from save to save, and a background thread writes the files, publishes them and commits the
        version; on several ranks ``dcp.async_save`` writes in the background and the files are published and
        committed at the next ``save`` or :meth:`drain`. Either way the version is committed only once every file
        is in the store: until then the previous checkpoint stays the newest, and a crash in between loses the
        pending one, never exposes half of it. Call :meth:`drain` at the end of the run.
        """
        done = self.drain() if self.async_save else ""
        if self.async_save and not self.dist.enabled:
            staged, extra_bytes = self._stage(state), io.BytesIO()
            torch.save(extra, extra_bytes)  # small (RNG states), and may hold live tensors: serialised now
            future = _executor().submit(self._write_and_publish, step, staged, extra_bytes.getvalue(), metadata,
                                        lineage)
            self._pending = _Pending(step, None, future, metadata, lineage)
            return done
        folder = Path(self.dist.broadcast_object(str(self.staging_root / f"ckpt-{step}-{uuid.uuid4().hex[:12]}")))
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(extra, folder / EXTRA.format(rank=self.dist.rank))
        writer = dcp.FileSystemWriter(str(folder))
        try:
            if self.async_save:  # several ranks: dcp writes in its thread, publish at the next save or drain
                self._pending = _Pending(step, folder, dcp.async_save(state, storage_writer=writer,
                                                                      process_group=self._group), metadata, lineage)
                return done
            with _quiet():
                dcp.save(state, storage_writer=writer, process_group=self.dist.group)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._publish(step, folder, metadata, lineage)

    def _stage(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with every tensor copied into this manager's CPU buffers (allocated at the first save, and
        again only when the state's layout changes), so the training thread pays one ``copy_`` per tensor."""
        from torch.utils._pytree import tree_flatten, tree_unflatten

        leaves, spec = tree_flatten(state)
        layout = (spec, [(v.shape, v.dtype) if isinstance(v, torch.Tensor) else None for v in leaves])
        if self._buffers is None or self._buffers[0] != layout:
            bufs = [torch.empty_like(v, device="cpu") if isinstance(v, torch.Tensor) else None for v in leaves]
            self._buffers = (layout, bufs)
        staged = []
        # One intra-op thread: a parallel copy_ of these small tensors waits for the pool's threads to be
        # scheduled, which on a loaded CPU made staging 70x slower (130 ms against 2 ms at load 15, 2 threads).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                for v, buf in zip(leaves, self._buffers[1], strict=True):
                    staged.append(buf.copy_(v.detach()) if buf is not None else v)
        finally:
            torch.set_num_threads(threads)
        return tree_unflatten(staged, spec)

    def _write_and_publish(self, step: int, state: dict[str, Any], extra: bytes,
                           metadata: dict[str, Any], lineage: dict[str, Any]) -> str:
        """The background part of a one-process asynchronous save: files, publication, commit."""
        folder = self.staging_root / f"ckpt-{step}-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            (folder / EXTRA.format(rank=0)).write_bytes(extra)
            with _quiet():
                dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), planner=self._planner,
                         no_dist=True)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._publish(step, folder, metadata, lineage)

    def drain(self) -> str:
        """Wait for the pending asynchronous save and complete it (publish and commit, if the background has
        not); returns its version id, or ``""``. A failure of the save is raised here."""
        pending, self._pending = self._pending, None
        if pending is None:
            return ""
        if pending.folder is None:  # written, published and committed in the background
            return str(pending.future.result())
        try:
            pending.future.result()
        except BaseException:
            shutil.rmtree(pending.folder, ignore_errors=True)
            raise
        return self._publish(pending.step, pending.folder, pending.metadata, pending.lineage)

    def finish(self) -> str:
        """The same as :meth:`drain`."""
        return self.drain()

    def abandon(self) -> None:
        """On a failed run: a pending one-process save is waited for (it commits or fails by itself, never after
        the run has returned), without raising; a pending multi-rank save is left unpublished (committing it
        needs every rank, and waiting on its collectives could hang on a dead peer)."""
        pending, self._pending = self._pending, None
        if pending is None or pending.folder is not None:
            return
        try:
            pending.future.result()
        except Exception as exc:  # the run is failing already; its own error is the one to report
            log.warning("pending checkpoint of step %d abandoned: %s", pending.step, exc)

    def _publish(self, step: int, folder: Path, metadata: dict[str, Any], lineage: dict[str, Any]) -> str:
        try:
            self.dist.barrier()  # every rank's files are complete before anyone publishes
            entries = [self.store.write_blob(self.dataset, path, name=path.name)
                       for path in sorted(self._mine(folder))]
            if self.run_dir is not None:
                chaos.maybe_fail("save", step, self.dist.rank, self.run_dir)
            gathered = self.dist.all_gather_object([e.canonical() for e in entries])
            vid = ""
            if self.dist.rank == 0:
                vid = self._commit(step, [e for part in gathered for e in part], metadata, lineage)
            vid = self.dist.broadcast_object(vid)
        finally:
            self.dist.barrier()
            if self.dist.local_rank == 0:
                shutil.rmtree(folder, ignore_errors=True)
        return str(vid)

    def _mine(self, folder: Path) -> list[Path]:
        """The files this rank wrote: its ``__<rank>_*`` shards and extras; rank 0 also the rest (metadata)."""
        rank, out = self.dist.rank, []
        for path in folder.iterdir():
            name = path.name
            if name.startswith("extra-"):
                owner = int(name[len("extra-"):-len(".pt")])
            elif name.startswith("__") and name.endswith(".distcp"):
                owner = int(name[2:].split("_", 1)[0])
            else:
                owner = 0
            if owner == rank:
                out.append(path)
        return out

    def _commit(self, step: int, entries: list[dict[str, Any]], metadata: dict[str, Any],
                lineage: dict[str, Any]) -> str:
        from granary.store.manifest import ShardEntry

        shards = [ShardEntry(**e) for e in sorted(entries, key=lambda e: e["meta"]["name"])]
        with self.store.transaction(self.dataset, mode="overwrite") as txn:
            txn.add_shards(shards)
            version = txn.commit(message=f"step {step}", lineage=lineage,
                                 metadata={**metadata, "step": step, "world_size": self.dist.world_size,
                                           "saved_at": time.time()}, allow_empty=True)
        log.info("checkpoint step %d committed as %s", step, version.short_id)
        if self.keep_last:
            self._retain()
        return version.id

    def _retain(self) -> None:
        """Retire the checkpoints outside ``keep_last``/``keep_every`` (the new one is the head: always kept).
        A refusal (say, a token that may not retire) is logged; it never loses the checkpoint just committed."""
        from granary.errors import GranaryError
        from granary.train.retention import apply_retention

        try:
            self.retention = apply_retention(self.store, self.dataset, keep_last=self.keep_last,
                                             keep_every=self.keep_every)
        except GranaryError as exc:
            log.warning("checkpoint retention on %s failed: %s", self.dataset, exc)
            self.retention = {"error": str(exc)}
            return
        if self.retention["retired"]:
            log.info("retention retired checkpoints at steps %s of %s", self.retention["retired_steps"],
                     self.dataset)

    # -- load ---------------------------------------------------------------------------------------------
    def load(self, ref: str, state: dict[str, Any]) -> Loaded:
        """Read checkpoint ``ref`` into ``state`` (in place, resharding as needed)."""
        manifest = self.store.open_version(ref, purpose=self.purpose)
        if manifest.kind != "checkpoint":
            raise TrainError(f"{ref} is a {manifest.kind} version, not a checkpoint")
        folder = self.staging_root / f"load-{manifest.version_id[:16]}-{uuid.uuid4().hex[:8]}-r{self.dist.rank}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for entry in manifest.shards:
                (folder / str(entry.meta["name"])).write_bytes(self.store.object_bytes(entry))
            with _quiet():
                dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)), process_group=self.dist.group)
            mine = folder / EXTRA.format(rank=self.dist.rank)
            extra = torch.load(io.BytesIO(mine.read_bytes()), weights_only=False) if mine.exists() else None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return Loaded(manifest.version_id, dict(manifest.metadata), extra)


@functools.lru_cache(maxsize=1)
def _executor() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="granary-ckpt")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns when used in a single process, which is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def checkpoint_versions(store: Store, dataset: str) -> list[VersionInfo]:
    """A run's checkpoints, newest first."""
    return store.log(dataset, limit=10_000)

"""A Granary site as a Flower client: trains the reference model on a local tokens version, sends only updates.

The site reads its data through the store's gate (the loader, with the run's declared purpose), checks before
joining that its dataset's policy allows the run's purpose and that its privacy budget can pay for the run's
client-level DP, and writes one audit record per round (``fed.round``: run, round, version, purpose and what left
the site: an update of so many bytes, masked, encrypted or plain). Updates are never logged.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Any

import numpy as np

from granary.errors import AuthorizationError, GranaryError
from granary.train.federated import wire
from granary.train.federated.aggregate import clip, flatten, unflatten
from granary.train.federated.config import SiteConfig
from granary.train.federated.errors import FederatedError

log = logging.getLogger(__name__)


def _flwr() -> Any:
    try:
        import flwr
    except ImportError:
        from granary.errors import MissingDependencyError

        raise MissingDependencyError("flwr", "privacy") from None
    return flwr


class Site:
    """The site's logic, independent of the transport (Flower calls it through :func:`flower_client`).

    Args:
        config: the site.
        store: the site's store (default: the store of ``config.home``).
    """

    def __init__(self, config: SiteConfig, *, store: Any = None) -> None:
        from granary.config import Settings
        from granary.secure.guard import Guard
        from granary.secure.settings import SecureSettings
        from granary.store import open_store

        self.config = config
        settings = Settings.from_env(home=config.home) if config.home else Settings.from_env()
        self.store = store or open_store(settings)
        self.guard = Guard(self.store.catalog, SecureSettings.from_env(self.store.settings.home))
        self.version = self.store.resolve(config.dataset)
        self._runs: dict[str, str | None] = {}  # run -> refusal reason (None: joined)
        self._purposes: dict[str, str] = {}  # run -> its declared purpose
        self._charged: dict[str, tuple[float, float]] = {}  # run -> (epsilon, delta) charged to the budget ledger
        self._masker: Any = None
        self._loader: Any = None
        self._batches: Any = None
        self._he: Any = None
        self.refused: str | None = None

    # -- joining --------------------------------------------------------------------------------
    def hello(self, config: dict[str, Any]) -> dict[str, Any]:
        """Check the run's purpose and budget (once per run) and answer with the site's name (and mask key)."""
        run, purpose = str(config.get("run", "")), str(config.get("purpose", ""))
        if run not in self._runs:
            self._runs[run] = self._admit(run, purpose, config)
            self._purposes[run] = purpose
        reason = self._runs[run]
        if reason is not None:
            self.refused = reason
            return {"site": self.config.name, "refused": reason}
        out: dict[str, Any] = {"site": self.config.name, "dataset": self.version.dataset, "version": self.version.id}
        if run in self._charged:
            out["charged_epsilon"], out["charged_delta"] = self._charged[run]
        if config.get("secure") == "mask":
            from granary.secure.secagg import SecAggClient

            self._masker = SecAggClient(self.config.name, f"{run}/{config.get('round')}")
            out["public_key"] = self._masker.public_keys()
        return out

    def _admit(self, run: str, purpose: str, config: dict[str, Any]) -> str | None:
        dataset = self.version.dataset
        try:
            if self.config.purpose is not None and purpose != self.config.purpose:
                raise FederatedError(f"site {self.config.name} serves only {self.config.purpose!r}, the run "
                                     f"declares {purpose!r}")
            self.guard.authorize("read", dataset, purpose=purpose, obj=f"fed:{run}")  # denials are audited
            eps = config.get("dp_epsilon")
            if isinstance(eps, float) and eps > 0:
                from granary.secure.dp import PrivateStats

                delta = float(config.get("dp_delta", 1e-5))
                PrivateStats(self.guard).charge(dataset, query=f"fed:{run}", mechanism="fed-dp", epsilon=eps,
                                                delta=delta)
                self._charged[run] = (eps, delta)
        except (AuthorizationError, GranaryError) as exc:
            self.guard.record("fed.join", dataset, obj=f"fed:{run}", outcome="denied",
                              details={"run": run, "purpose": purpose, "reason": str(exc)})
            log.warning("site %s refuses run %s: %s", self.config.name, run, exc)
            return str(exc)
        self.guard.record("fed.join", dataset, obj=f"fed:{run}",
                          details={"run": run, "purpose": purpose, "version": self.version.id})
        return None

    # -- training -------------------------------------------------------------------------------
    def _batch(self, purpose: str, batch_size: int, seq_len: int) -> Any:
        from granary.stream import StreamingDataset

        if self._loader is None:
            self._loader = StreamingDataset(self.version.ref, batch_size=batch_size, seq_len=seq_len,
                                            seed=self.config.seed, shuffle="global", rank=0, world_size=1,
                                            store=self.store, purpose=purpose)
            self._batches = iter(self._loader)
        try:
            return next(self._batches)["tokens"]
        except StopIteration:
            self._batches = iter(self._loader)
            return next(self._batches)["tokens"]

    def fit(self, arrays: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Train from the global weights for ``local_steps``; return the update (plain, masked or encrypted)."""
        run, rnd = str(config.get("run", "")), int(config.get("round", 0))
        if self._runs.get(run, "not joined") is not None:
            raise FederatedError(f"site {self.config.name} has not joined run {run!r}: {self._runs.get(run)}")
        from granary.train.federated import chaos

        chaos.maybe_fail("fit", rnd)
        delta, samples, loss = self._train(arrays, config)
        delta = chaos.maybe_poison(delta, rnd)
        secure = str(config.get("secure", "none"))
        if secure == "none":
            shapes = [tuple(a.shape) for a in arrays]
            out = chaos.maybe_malform(unflatten(delta, shapes), rnd)
        else:
            weight = 1.0 if config.get("dp_epsilon") else float(samples)
            out = [self._seal(delta * weight, secure, config)]
        sent = int(sum(a.nbytes for a in out))
        self.guard.record("fed.round", self.version.dataset, obj=f"fed:{run}",
                          details={"run": run, "round": rnd, "version": self.version.id,
                                   "purpose": str(config.get("purpose")), "sent": "model update", "secure": secure,
                                   "bytes": sent, "samples": samples})
        return out, samples, {"site": self.config.name, "loss": loss, "bytes": sent}

    def _train(self, arrays: list[np.ndarray], config: dict[str, Any]) -> tuple[np.ndarray, int, float]:
        import torch

        from granary.train.model import GPT, loss_fn
        from granary.train.recipe import ModelConfig

        model_cfg = ModelConfig(**wire.loads(config, "model"))
        torch.manual_seed(self.config.seed * 1000 + int(config.get("round", 0)))
        model = GPT(model_cfg)
        names = list(model.state_dict())
        model.load_state_dict({n: torch.from_numpy(np.array(a)) for n, a in zip(names, arrays, strict=True)})
        start = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.AdamW(model.parameters(), lr=float(config["lr"]), weight_decay=0.0)
        mu, steps = float(config.get("proximal_mu", 0.0)), int(config["local_steps"])
        batch_size = int(config["batch_size"])
        purpose = str(config.get("purpose"))
        total = 0.0
        model.train()
        for _ in range(steps):
            tokens = self._batch(purpose, batch_size, model_cfg.context + 1)
            loss = loss_fn(model(tokens[:, :-1]), tokens[:, 1:])
            total += float(loss.detach())
            if mu > 0:  # FedProx: keep the local model near the round's global weights
                loss = loss + 0.5 * mu * sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start,
                                                                                    strict=True))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        new = flatten([v.detach().numpy() for v in model.state_dict().values()])
        delta = clip(new - flatten(arrays), float(config.get("norm_bound", 0.0)))
        return delta, steps * batch_size, total / steps

    def _seal(self, vec: np.ndarray, secure: str, config: dict[str, Any]) -> np.ndarray:
        if secure == "mask":
            if self._masker is None:
                raise FederatedError("a masked round started without the key exchange")
            shares = {k: bytes.fromhex(v) for k, v in wire.loads(config, "shares").items()}
            return np.asarray(self._masker.mask(vec, shares))
        if secure == "ckks":
            from granary.secure import he

            return np.frombuffer(he.encrypt(self._context(), vec), dtype=np.uint8).copy()
        raise FederatedError(f"unknown secure mode {secure!r}")

    def _context(self) -> Any:
        from granary.secure import he

        if self._he is None:
            if not self.config.he_context:
                raise FederatedError(f"site {self.config.name} has no CKKS context for a ckks run",
                                     hint="pass --he-context FILE (made by `granary fed keys`)")
            with open(self.config.he_context, "rb") as f:
                self._he = he.load_context(f.read())
        return self._he

    # -- after the round --------------------------------------------------------------------------
    def share(self, config: dict[str, Any]) -> dict[str, Any]:
        """Shamir shares of this round's mask key and self-mask seed, each encrypted to the peer that holds it."""
        if self._masker is None:
            raise FederatedError("no masked round to share keys for")
        peers = {k: bytes.fromhex(v) for k, v in wire.loads(config, "peers").items()}
        shares = self._masker.share_keys(peers, threshold=int(config.get("threshold", 0)))
        return {"shares": wire.dumps({k: v.hex() for k, v in shares.items()})}

    def reveal(self, config: dict[str, Any]) -> dict[str, Any]:
        """The unmasking shares: self-mask seeds of the survivors, mask keys of the dropped (never both for one)."""
        if self._masker is None:
            raise FederatedError("no masked round to unmask")
        shares = self._masker.unmask(wire.loads(config, "survivors"), wire.loads(config, "dropped"))
        return {"shares": wire.dumps({u: [kind, s.hex()] for u, (kind, s) in shares.items()})}

    def stats(self, config: dict[str, Any]) -> dict[str, Any]:
        """Statistics of the site's version (documents, tokens, samples, documents by token length), encrypted for a
        homomorphic sum."""
        from granary.secure import he

        run = str(config.get("run", ""))
        if self._runs.get(run, "not joined") is not None:
            raise FederatedError(f"site {self.config.name} has not joined run {run!r}")
        keys = [str(k) for k in wire.loads(config, "keys")]
        manifest = self.store.manifest(self.version)
        samples = self._loader.num_samples if self._loader is not None else 0
        values = {"documents": float(manifest.num_rows), "tokens": float(manifest.num_tokens or 0),
                  "samples": float(samples)}
        if any(k in keys for k in wire.HIST_KEYS):
            values |= wire.length_histogram(self._doc_lengths(self._purposes.get(run)))
        blob = he.encrypt_stats(self._context(), {k: v for k, v in values.items() if k in keys}, keys)
        self.guard.record("fed.stats", self.version.dataset, obj=f"fed:{run}",
                          details={"run": run, "version": self.version.id, "sent": "encrypted statistics",
                                   "keys": keys, "bytes": len(blob)})
        return {"stats": blob}

    def _doc_lengths(self, purpose: str | None) -> np.ndarray:
        """Token count of every document of the version (from the shards' footers), read through the gate."""
        from granary.store.formats.tokens import TokenShardReader

        manifest = self.store.open_version(self.version, purpose=purpose)  # authorised for the run's purpose, audited
        parts = [np.diff(np.asarray(TokenShardReader(self.store.object_bytes(e), name=e.key).doc_offsets,
                                    dtype=np.int64)) for e in manifest.shards]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def decrypt(self, config: dict[str, Any]) -> dict[str, Any]:
        """Decrypt a homomorphic *sum* (the coordinator sends nothing else) into float64 bytes."""
        from granary.secure import he

        blob, length = config.get("blob"), int(config.get("length", 0))
        if not isinstance(blob, bytes):
            raise FederatedError("decrypt request without a ciphertext")
        n = int(config.get("summands", 0))
        if n < 2:
            raise FederatedError(f"refusing to decrypt a sum of {n} updates: it would expose one site's update")
        return {"sum": he.decrypt(self._context(), blob, length).tobytes()}


def flower_client(site: Site) -> Any:
    """Wrap a :class:`Site` as a Flower ``NumPyClient``."""
    fl = _flwr()

    class _Client(fl.client.NumPyClient):  # type: ignore[name-defined]
        def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
            step = config.get("granary")
            if step == wire.HELLO:
                return site.hello(config)
            if step == wire.SHARE:
                return site.share(config)
            if step == wire.REVEAL:
                return site.reveal(config)
            if step == wire.DECRYPT:
                return site.decrypt(config)
            if step == wire.STATS:
                return site.stats(config)
            return {"site": site.config.name}

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            return site.fit(parameters, config)

        def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            return 0.0, 0, {}

    return _Client().to_client()


def wait_for_server(address: str, *, timeout_s: float) -> None:
    """Poll until the coordinator accepts TCP connections (sites may start first)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise FederatedError(f"no coordinator answers at {address} after {timeout_s:g} s",
                                     hint="start `granary fed server` first, or check --server") from None
            time.sleep(0.2)  # polling a port that is not open yet


def run_client(config: SiteConfig, server_address: str) -> int:
    """Join the coordinator at ``server_address`` until the run ends; 0, or 3 if this site refused the run."""
    fl = _flwr()
    site = Site(config)
    wait_for_server(server_address, timeout_s=float(os.environ.get("GRANARY_FED_WAIT_S", 60)))
    log.info("site %s joins %s with %s", config.name, server_address, site.version.ref)
    fl.client.start_client(server_address=server_address, client=flower_client(site),
                           grpc_max_message_length=1 << 30, max_retries=int(os.environ.get("GRANARY_FED_RETRIES", 30)),
                           max_wait_time=float(os.environ.get("GRANARY_FED_WAIT_S", 60)))
    if site.refused:
        print(f"site {config.name} refused the run: {site.refused}", file=sys.stderr)
        return 3
    return 0

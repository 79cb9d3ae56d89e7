"""The coordinator's Flower strategy: joins sites, routes the secure-aggregation steps, aggregates updates.

Every round: each connected site is asked to join (``hello``: it checks the run's purpose and budget), the
joined sites train (``fit``) and send updates. Plain updates are checked (shape, dtype, finite, norm bound) and
combined by the configured rule. Masked rounds (:mod:`granary.secure.secagg`) add a step before ``fit``: each site
Shamir-shares its mask key and self-mask seed, encrypted to each peer, and the coordinator routes the shares; after
``fit`` the survivors send the shares that remove the self-masks of the survivors and the pairwise masks of the
sites that dropped, so only the sum is unmasked. CKKS updates are added as ciphertexts and one site decrypts only
the sum. Client-level DP adds Gaussian noise to the aggregate. The server optimiser (FedAvg/FedProx/FedAdam)
then moves the global weights.
A round with fewer than ``min_clients`` accepted updates fails with its reason and leaves the weights as they were.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from granary.train.federated import aggregate as agg
from granary.train.federated import wire
from granary.train.federated.config import FedConfig
from granary.train.federated.errors import FederatedError, UpdateRejected

log = logging.getLogger(__name__)


def initial_weights(cfg: FedConfig) -> list[np.ndarray]:
    """The global model at round 0: the reference GPT initialised with the run's seed."""
    import torch

    from granary.train.model import GPT

    torch.manual_seed(cfg.seed)
    return [v.detach().numpy().copy() for v in GPT(cfg.model).state_dict().values()]


def build_strategy(cfg: FedConfig, *, he_public: bytes | None = None) -> Any:
    """A Flower ``Strategy`` running ``cfg`` (flwr is imported here, not at module import)."""
    try:
        from flwr.common import GetPropertiesIns, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server.strategy import Strategy
    except ImportError:
        from granary.errors import MissingDependencyError

        raise MissingDependencyError("flwr", "privacy") from None

    class GranaryStrategy(Strategy):
        def __init__(self) -> None:
            self.cfg = cfg
            self.weights = initial_weights(cfg)
            self.shapes = [tuple(a.shape) for a in self.weights]
            self.global_vec = agg.flatten(self.weights)
            self.optimizer = agg.server_optimizer(cfg.strategy, cfg.server_lr)
            self.noise = (agg.dp_noise_multiplier(cfg.dp_epsilon, cfg.dp_delta, cfg.rounds)
                          if cfg.dp_epsilon is not None else 0.0)
            self.rng = np.random.default_rng(cfg.seed + 1)
            self.he_ctx = None
            if cfg.secure == "ckks":
                from granary.secure import he

                if he_public is None:
                    raise FederatedError("a ckks run needs the public CKKS context",
                                         hint="pass --he-context FILE.pub (made by `granary fed keys`)")
                self.he_ctx = he.load_context(he_public)
            self.rounds: list[dict[str, Any]] = []
            self.refused: dict[str, str] = {}
            self.sites: dict[str, str] = {}  # proxy cid -> site name
            self.site_info: dict[str, dict[str, Any]] = {}  # site -> dataset, version, budget charged (lineage)
            self.keys: dict[str, bytes] = {}  # site -> mask public keys of the current round
            self.secagg: Any = None  # the current masked round's SecAggServer
            self.site_stats: dict[str, float] | None = None  # summed site statistics (ckks runs)
            self._t0 = time.perf_counter()

        # -- Flower hooks ---------------------------------------------------------------------
        def initialize_parameters(self, client_manager: Any) -> Any:
            return ndarrays_to_parameters(self.weights)

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
            want = cfg.expected_clients if server_round == 1 else cfg.min_clients
            if not client_manager.wait_for(want, timeout=int(cfg.round_timeout_s)) and \
                    client_manager.num_available() < cfg.min_clients:
                raise FederatedError(f"round {server_round}: {client_manager.num_available()} sites connected "
                                     f"within {cfg.round_timeout_s:g} s; the run needs at least {cfg.min_clients}",
                                     hint="start more sites (`granary fed client`) or lower min_clients")
            proxies = list(client_manager.all().values())
            self._t0, self.keys = time.perf_counter(), {}
            joined = [p for p in proxies if self._hello(p, server_round)]
            if cfg.secure == "mask" and len(joined) >= cfg.min_clients:
                try:
                    joined = self._share(server_round, joined)
                except FederatedError as exc:
                    self._fail(server_round, str(exc))
                    return []
            if len(joined) < cfg.min_clients:
                self._fail(server_round, f"only {len(joined)} sites joined (refused: {self.refused or 'none'}); "
                                         f"min_clients is {cfg.min_clients}")
                return []
            conf = self._fit_config(server_round)
            from flwr.common import FitIns

            return [(p, FitIns(parameters, self._site_config(p, conf))) for p in joined]

        def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> Any:
            report: dict[str, Any] = {"round": server_round, "failures": len(failures), "rejected": {}}
            try:
                update, accepted, received = self._aggregate(server_round, results, report)
            except FederatedError as exc:
                self._fail(server_round, str(exc), report)
                return None, {}
            if self.noise:
                update = update + self.rng.normal(0.0, self.noise * cfg.norm_bound, update.size) / accepted
            self.global_vec = self.optimizer.step(self.global_vec, update)
            self.weights = agg.unflatten(self.global_vec, self.shapes)
            losses = [float(r.metrics.get("loss", np.nan)) for _, r in results]
            report.update(status="ok", accepted=accepted, bytes_received=received,
                          train_loss=float(np.nanmean(losses)) if losses else None,
                          seconds=time.perf_counter() - self._t0)
            self.rounds.append(report)
            if cfg.secure == "ckks" and server_round == cfg.rounds:
                self.site_stats = self._site_stats(server_round, [p for p, _ in results])
            log.info("round %d: %d updates aggregated (%s), %d failures, %d rejected", server_round, accepted,
                     cfg.secure, len(failures), len(report["rejected"]))
            return ndarrays_to_parameters(self.weights), {"accepted": accepted}

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
            return []

        def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> Any:
            return None, {}

        def evaluate(self, server_round: int, parameters: Any) -> Any:
            return None

        # -- steps ----------------------------------------------------------------------------
        def _ask(self, proxy: Any, rnd: int, step: str, **values: Any) -> dict[str, Any] | None:
            ins = GetPropertiesIns(config={"granary": step, "run": cfg.name, "round": rnd, **values})
            try:
                res = proxy.get_properties(ins, timeout=cfg.round_timeout_s, group_id=rnd)
            except Exception as exc:  # a site that died or timed out: it is left out of the step
                log.warning("site %s did not answer %s: %s", self.sites.get(proxy.cid, proxy.cid), step,
                            type(exc).__name__)
                return None
            if res.status.code.value != 0:
                log.warning("site %s failed %s: %s", self.sites.get(proxy.cid, proxy.cid), step, res.status.message)
                return None
            return dict(res.properties)

        def _hello(self, proxy: Any, rnd: int) -> bool:
            extra: dict[str, Any] = {"purpose": cfg.purpose, "secure": cfg.secure}
            if cfg.dp_epsilon is not None:
                extra.update(dp_epsilon=float(cfg.dp_epsilon), dp_delta=float(cfg.dp_delta))
            props = self._ask(proxy, rnd, wire.HELLO, **extra)
            if props is None:
                return False
            site = str(props.get("site", proxy.cid))
            self.sites[proxy.cid] = site
            if "refused" in props:
                self.refused[site] = str(props["refused"])
                return False
            self.site_info[site] = {k: props[k] for k in ("dataset", "version", "charged_epsilon", "charged_delta")
                                    if k in props}
            if cfg.secure == "mask":
                key = props.get("public_key")
                if not isinstance(key, bytes) or site in self.keys:
                    log.warning("site %s sent no usable mask key (or a duplicate name); left out", site)
                    return False
                self.keys[site] = key
            return True

        def _fit_config(self, rnd: int) -> dict[str, Any]:
            conf: dict[str, Any] = {
                "run": cfg.name, "round": rnd, "purpose": cfg.purpose, "secure": cfg.secure,
                "local_steps": cfg.local_steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
                "proximal_mu": cfg.proximal_mu, "norm_bound": cfg.norm_bound,
                "model": wire.dumps(cfg.to_dict()["model"]),
            }
            if cfg.dp_epsilon is not None:
                conf["dp_epsilon"] = float(cfg.dp_epsilon)
            return conf

        def _site_config(self, proxy: Any, conf: dict[str, Any]) -> dict[str, Any]:
            if cfg.secure != "mask":
                return conf
            shares = self.secagg.shares_for(self.sites[proxy.cid])  # encrypted to that site: unreadable here
            return {**conf, "shares": wire.dumps({s: c.hex() for s, c in shares.items()})}

        def _share(self, rnd: int, joined: list[Any]) -> list[Any]:
            """Route the sites' encrypted Shamir shares; the sites whose shares arrived may mask (U2)."""
            from granary.secure.errors import SecAggError
            from granary.secure.secagg_server import SecAggServer

            keys = {self.sites[p.cid]: self.keys[self.sites[p.cid]] for p in joined}
            try:
                self.secagg = SecAggServer(keys, int(self.global_vec.size), round_id=f"{cfg.name}/{rnd}",
                                           threshold=cfg.secagg_threshold)
            except SecAggError as exc:
                raise FederatedError(f"secure aggregation cannot start with {len(keys)} sites: {exc}") from None
            peers, kept = wire.dumps({s: k.hex() for s, k in keys.items()}), []
            for proxy in joined:
                site = self.sites[proxy.cid]
                props = self._ask(proxy, rnd, wire.SHARE, peers=peers, threshold=self.secagg.threshold)
                if props is None:
                    continue
                try:
                    shares = {r: bytes.fromhex(h) for r, h in wire.loads(props, "shares").items()}
                    self.secagg.add_shares(site, shares)
                except (SecAggError, FederatedError, ValueError, AttributeError) as exc:
                    log.warning("round %d: shares of site %s refused: %s", rnd, site, exc)
                    continue
                kept.append(proxy)
            if len(kept) < self.secagg.threshold:
                raise FederatedError(f"only {len(kept)} of {len(keys)} sites shared their mask keys; the secure-"
                                     f"aggregation threshold is {self.secagg.threshold}")
            return kept

        def _aggregate(self, rnd: int, results: list[Any], report: dict[str, Any]) -> tuple[np.ndarray, int, int]:
            received = 0
            arrays_by_site: list[tuple[Any, str, list[np.ndarray], int]] = []
            for proxy, res in results:
                site = str(res.metrics.get("site", self.sites.get(proxy.cid, proxy.cid)))
                arrays = parameters_to_ndarrays(res.parameters)
                received += int(sum(a.nbytes for a in arrays))
                arrays_by_site.append((proxy, site, arrays, int(res.num_examples)))
            if cfg.secure == "mask":
                update, n = self._unmask(rnd, arrays_by_site, report)
            elif cfg.secure == "ckks":
                update, n = self._decrypt_sum(rnd, arrays_by_site, report)
            else:
                update, n = self._plain(arrays_by_site, report)
            return update, n, received

        def _plain(self, items: list[tuple[Any, str, list[np.ndarray], int]],
                   report: dict[str, Any]) -> tuple[np.ndarray, int]:
            updates, weights = [], []
            report["sites"] = []
            for _, site, arrays, samples in items:
                try:
                    updates.append(agg.check_update(site, arrays, self.shapes, norm_bound=cfg.norm_bound))
                    weights.append(1.0 if cfg.dp_epsilon is not None else float(max(samples, 1)))
                    report["sites"].append(site)
                except UpdateRejected as exc:
                    report["rejected"][site] = exc.reason
                    log.warning("round %d: %s", report["round"], exc)
            self._enough(len(updates), report)
            if self.noise:  # DP: the sum of clipped updates over their count (sensitivity norm_bound / n)
                return np.sum(updates, axis=0) / len(updates), len(updates)
            return agg.aggregate(updates, weights, rule=cfg.aggregation, trim_fraction=cfg.trim_fraction), \
                len(updates)

        def _enough(self, n: int, report: dict[str, Any]) -> None:
            if n < cfg.min_clients:
                raise FederatedError(f"{n} accepted updates, min_clients is {cfg.min_clients}"
                                     + (f"; rejected: {report['rejected']}" if report.get("rejected") else ""))

        def _unmask(self, rnd: int, items: list[tuple[Any, str, list[np.ndarray], int]],
                    report: dict[str, Any]) -> tuple[np.ndarray, int]:
            from granary.secure.errors import SecAggError

            masked = self.secagg
            total_samples = 0
            survivors: dict[str, Any] = {}
            for proxy, site, arrays, samples in items:
                try:
                    if len(arrays) != 1:
                        raise SecAggError(f"{site} sent {len(arrays)} arrays; a masked update is one vector")
                    masked.add(site, arrays[0])
                except SecAggError as exc:
                    report["rejected"][site] = str(exc)
                    continue
                survivors[site], total_samples = proxy, total_samples + samples
            report["dropped"], report["sites"] = masked.dropped, sorted(survivors)
            answers: dict[str, dict[str, tuple[str, bytes]]] = {}
            alive, gone = wire.dumps(masked.survivors), wire.dumps(masked.dropped)
            revealed = 0
            for site, proxy in survivors.items():
                props = self._ask(proxy, rnd, wire.REVEAL, survivors=alive, dropped=gone)
                if props is None:
                    continue
                try:
                    answers[site] = {u: (str(k), bytes.fromhex(h)) for u, (k, h) in wire.loads(props, "shares").items()}
                except (FederatedError, ValueError, TypeError) as exc:
                    log.warning("round %d: unmasking answer of site %s refused: %s", rnd, site, exc)
                    continue
                revealed += sum(len(b) for _, b in answers[site].values())
            report["secagg_bytes"] = masked.share_bytes + revealed
            try:
                total = masked.unmask(answers)
            except SecAggError as exc:
                raise FederatedError(f"masked sum not recoverable: {exc}") from None
            self._enough(len(survivors), report)
            n = len(survivors)
            return total / (n if cfg.dp_epsilon is not None else max(total_samples, 1)), n

        def _decrypt_sum(self, rnd: int, items: list[tuple[Any, str, list[np.ndarray], int]],
                         report: dict[str, Any]) -> tuple[np.ndarray, int]:
            from granary.secure import he

            self._enough(len(items), {})
            blobs = [arrays[0].tobytes() for _, _, arrays, _ in items]
            try:
                total = he.add(self.he_ctx, blobs)
            except Exception as exc:
                raise FederatedError(f"encrypted updates cannot be added: {exc}") from None
            report["sites"] = sorted(site for _, site, _, _ in items)
            size = int(self.global_vec.size)
            for proxy, _site, _, _ in items:  # any live site holding the key decrypts the sum
                props = self._ask(proxy, rnd, wire.DECRYPT, blob=total, length=size, summands=len(items))
                if props is not None and isinstance(props.get("sum"), bytes):
                    vec = np.frombuffer(props["sum"], dtype=np.float64)
                    samples = sum(s for *_, s in items)
                    n = len(items)
                    return vec / (n if cfg.dp_epsilon is not None else max(samples, 1)), n
            raise FederatedError("no site decrypted the encrypted sum")

        def _site_stats(self, rnd: int, proxies: list[Any]) -> dict[str, float] | None:
            """Documents, tokens, samples and documents per length bin, summed over the sites under CKKS: no site's
            own figures are seen."""
            from granary.secure import he

            keys = list(wire.STATS_KEYS)
            answers = [self._ask(p, rnd, wire.STATS, keys=wire.dumps(keys)) for p in proxies]
            blobs = [a["stats"] for a in answers if a is not None and isinstance(a.get("stats"), bytes)]
            if len(blobs) < 2:
                log.warning("site statistics: %d encrypted answers, at least 2 are needed", len(blobs))
                return None
            total = he.add(self.he_ctx, blobs)
            for proxy in proxies:
                props = self._ask(proxy, rnd, wire.DECRYPT, blob=total, length=len(keys), summands=len(blobs))
                if props is not None and isinstance(props.get("sum"), bytes):
                    values = np.frombuffer(props["sum"], dtype=np.float64)
                    return {k: float(round(v)) for k, v in zip(keys, values, strict=True)}
            return None

        def _fail(self, rnd: int, reason: str, report: dict[str, Any] | None = None) -> None:
            log.error("round %d failed: %s", rnd, reason)
            self.rounds.append({**(report or {"round": rnd}), "status": "failed", "reason": reason})

    return GranaryStrategy()

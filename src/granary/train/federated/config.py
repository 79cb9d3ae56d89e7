"""Configuration of a federated run (coordinator side) and of one site (client side)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from granary.train.federated.errors import FederatedError
from granary.train.recipe import ModelConfig

SecureMode = Literal["none", "mask", "ckks"]
ServerOptimizer = Literal["fedavg", "fedprox", "fedadam"]
AggregationRule = Literal["mean", "trimmed-mean", "median"]


@dataclass(kw_only=True, frozen=True)
class FedConfig:
    """One federated run, as the coordinator runs it.

    Attributes:
        name: the run's name (audited at each site, charged to privacy budgets).
        rounds: federated rounds.
        min_clients: a round needs at least this many accepted updates, else it fails.
        expected_clients: round 1 waits (up to ``round_timeout_s``) for this many sites to connect.
        strategy: server optimiser: ``fedavg``, ``fedprox`` (FedAvg with a proximal term at the sites) or
            ``fedadam`` (Adam on the averaged update, Reddi et al. 2021).
        aggregation: ``mean`` (weighted by samples), or the robust ``trimmed-mean`` / ``median`` (coordinate-wise).
        trim_fraction: fraction of updates dropped at each end per coordinate by ``trimmed-mean``.
        secure: ``none``; ``mask`` (secure aggregation with Shamir-shared masks, Bonawitz et al.: the server sees
            only the sum, also when sites drop after masking); ``ckks`` (updates encrypted with CKKS; the server adds
            ciphertexts, one site decrypts only the sum).
        secagg_threshold: ``mask`` runs: Shamir shares needed to unmask (default: more than half of the round's
            sites); a round fails when fewer sites than this survive to the unmasking step.
        norm_bound: sites clip their update to this L2 norm and the server rejects larger ones (0: off).
        dp_epsilon: client-level differential privacy: Gaussian noise on the aggregate calibrated so the run is
            (dp_epsilon, dp_delta)-DP for one site's participation (needs norm_bound); None: off.
        purpose: the purpose the run declares; a site whose data does not allow it refuses to join.
        publish: a checkpoint dataset of the coordinator's store (its GRANARY_HOME) to commit the final model to,
            with the run's lineage (sites, their versions, rounds, privacy budget); None: only ``model.pt``.
    """

    name: str = "fed"
    rounds: int = 3
    min_clients: int = 2
    expected_clients: int = 2
    strategy: ServerOptimizer = "fedavg"
    aggregation: AggregationRule = "mean"
    trim_fraction: float = 0.25
    secure: SecureMode = "none"
    secagg_threshold: int | None = None
    norm_bound: float = 0.0
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    purpose: str = "training"
    publish: str | None = None
    local_steps: int = 10
    batch_size: int = 8
    lr: float = 3e-3
    server_lr: float = 1.0
    proximal_mu: float = 0.0
    seed: int = 0
    round_timeout_s: float = 120.0
    address: str = "127.0.0.1:8080"
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        problems = [
            ("rounds", self.rounds >= 1), ("min_clients", self.min_clients >= 1),
            ("expected_clients", self.expected_clients >= self.min_clients),
            ("trim_fraction", 0 <= self.trim_fraction < 0.5), ("norm_bound", self.norm_bound >= 0),
            ("local_steps", self.local_steps >= 1), ("batch_size", self.batch_size >= 1),
            ("lr", self.lr > 0), ("server_lr", self.server_lr > 0), ("proximal_mu", self.proximal_mu >= 0),
            ("dp_delta", 0 < self.dp_delta < 1), ("round_timeout_s", self.round_timeout_s > 0),
        ]
        for name, ok in problems:
            if not ok:
                raise FederatedError(f"federated config field {name} has a bad value ({getattr(self, name)!r})")
        if self.secure != "none" and self.aggregation != "mean":
            raise FederatedError(f"aggregation {self.aggregation!r} needs each update in the clear; secure "
                                 f"aggregation ({self.secure}) gives the server only the sum",
                                 hint="use aggregation: mean with secure aggregation (and norm_bound at the sites)")
        if self.secure != "none" and self.min_clients < 2:
            raise FederatedError(f"secure: {self.secure} needs min_clients >= 2: a sum of one update is that update")
        if self.secagg_threshold is not None and (self.secure != "mask" or self.secagg_threshold < 2):
            raise FederatedError(f"secagg_threshold {self.secagg_threshold} needs secure: mask and a value >= 2")
        if self.dp_epsilon is not None and (self.dp_epsilon <= 0 or self.norm_bound <= 0):
            raise FederatedError("client-level DP needs dp_epsilon > 0 and a norm_bound > 0 (the sensitivity)")
        if self.strategy != "fedprox" and self.proximal_mu:
            raise FederatedError("proximal_mu is the FedProx term: set strategy: fedprox")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> FedConfig:
        """Map plain data (JSON/YAML) onto the config; an unknown or mistyped field names ``source``."""
        from granary.train.recipe import build_dataclass

        return build_dataclass(cls, data, source=source)  # type: ignore[no-any-return,unused-ignore]

    @classmethod
    def load(cls, path: str | Path) -> FedConfig:
        """Read a YAML or JSON config file."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise FederatedError(f"cannot read federated config {path}: {exc}") from None
        return cls.from_dict(data or {}, source=str(path))

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(kw_only=True, frozen=True)
class SiteConfig:
    """One site: its Granary home, the tokens dataset it trains on, and its name in the federation.

    Attributes:
        name: unique site name (audited; keys the pairwise masks).
        dataset: a tokens dataset ref in the site's home.
        home: the site's Granary home (default GRANARY_HOME).
        purpose: if set, the only purpose this site serves; a run declaring another is refused.
        he_context: path of the shared secret CKKS context (``ckks`` runs).
        seed: the site's data order seed.
    """

    name: str
    dataset: str
    home: str | None = None
    purpose: str | None = None
    he_context: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "\0\n"):
            raise FederatedError(f"bad site name {self.name!r}")

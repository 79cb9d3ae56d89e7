"""The coordinator's strategy and the sites in one process (Flower's proxies replaced by direct calls): masked and
CKKS rounds give the plain round's model within floating-point tolerance, also with a site dropping out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from granary.train.federated import FedConfig, SiteConfig
from tests.integration.train.helpers import make_tokens

fl = pytest.importorskip("flwr")
pytest.importorskip("torch")

MODEL = {"vocab_size": 256, "d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16}


class Proxy:
    """Stands in for Flower's ClientProxy: forwards to a Site in this process."""

    def __init__(self, site: Any) -> None:
        self.site, self.cid = site, f"cid-{site.config.name}"
        from granary.train.federated.client import flower_client

        self.client = flower_client(site)

    def get_properties(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
        return self.client.get_properties(ins)


class Manager:
    def __init__(self, proxies: list[Proxy]) -> None:
        self.proxies = {p.cid: p for p in proxies}

    def wait_for(self, n: int, timeout: int) -> bool:
        return len(self.proxies) >= n

    def num_available(self) -> int:
        return len(self.proxies)

    def all(self) -> dict[str, Proxy]:
        return self.proxies


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sites")
    out = []
    for i in range(3):
        make_tokens(root / f"s{i}", "tok", docs=40, seed=i)
        out.append(root / f"s{i}")
    return out


def _round(homes: list[Path], secure: str, *, drop: str | None = None, tmp: Path | None = None) -> list[np.ndarray]:
    from granary.train.federated.client import Site
    from granary.train.federated.strategy import build_strategy

    he_public, ctx = None, None
    if secure == "ckks":
        from granary.secure import he

        secret = he.new_context()
        assert tmp is not None
        ctx = tmp / "k.ctx"
        ctx.write_bytes(secret)
        he_public = he.public_context(secret)
    sites = [Site(SiteConfig(name=f"s{i}", dataset="tok", home=str(h), seed=i,
                             he_context=str(ctx) if ctx else None)) for i, h in enumerate(homes)]
    cfg = FedConfig.from_dict({"name": f"unit-{secure}", "rounds": 1, "min_clients": 2, "expected_clients": 3,
                               "secure": secure, "local_steps": 2, "batch_size": 4, "model": MODEL,
                               "norm_bound": 50.0})
    strategy = build_strategy(cfg, he_public=he_public)
    proxies = [Proxy(s) for s in sites]
    params = strategy.initialize_parameters(None)
    instructions = strategy.configure_fit(1, params, Manager(proxies))
    assert len(instructions) == 3
    results, failures = [], []
    for proxy, ins in instructions:
        if proxy.site.config.name == drop:
            failures.append(RuntimeError("site went away"))
            continue
        arrays, n, metrics = proxy.site.fit(fl.common.parameters_to_ndarrays(ins.parameters), ins.config)
        res = fl.common.FitRes(status=fl.common.Status(code=fl.common.Code.OK, message=""),
                               parameters=fl.common.ndarrays_to_parameters(arrays), num_examples=n, metrics=metrics)
        results.append((proxy, res))
    new, _ = strategy.aggregate_fit(1, results, failures)
    assert strategy.rounds[-1]["status"] == "ok", strategy.rounds
    return list(fl.common.parameters_to_ndarrays(new))


@pytest.mark.parametrize("drop", [None, "s1"])
def test_secure_rounds_equal_the_plain_round(homes: list[Path], tmp_path: Path, drop: str | None) -> None:
    from granary.train.federated.strategy import initial_weights

    plain = _round(homes, "none", drop=drop)
    start = initial_weights(FedConfig(model=FedConfig.from_dict({"model": MODEL}).model))
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(plain, start, strict=True)) > 1e-3  # the round moved
    for secure, tol in (("mask", 1e-6), ("ckks", 1e-6)):
        got = _round(homes, secure, drop=drop, tmp=tmp_path)
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(got, plain, strict=True)) < tol, secure
    moved = _round(homes, "none", drop=drop)
    assert all(np.array_equal(a, b) for a, b in zip(moved, plain, strict=True))  # deterministic rounds

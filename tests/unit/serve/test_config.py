"""Gateway configs: YAML onto dataclasses, and clear errors naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from granary.serve.config import GatewayConfig, config_from_dict, load_config
from granary.serve.errors import GatewayConfigError, UnknownPolicyError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "gateway.yaml"


def _route(**kw: object) -> dict[str, object]:
    return {"name": "r", "models": ["m"], "backends": [{"name": "a", "url": "http://127.0.0.1:9000"}], **kw}


def test_the_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg, GatewayConfig) and cfg.routes
    assert {r.policy for r in cfg.routes} >= {"prefix_aware"}


def test_nested_sections_map_onto_dataclasses() -> None:
    cfg = config_from_dict({"routes": [_route(policy="ring_hash", policy_params={"key": "body:user"},
                                              health={"path": "/healthz", "interval_s": 0.5},
                                              retry={"attempts": 2, "retry_statuses": [503]})]})
    r = cfg.routes[0]
    assert r.health.path == "/healthz" and r.health.interval_s == 0.5
    assert r.retry.retry_statuses == (503,) and r.backends[0].weight == 1.0


@pytest.mark.parametrize(("change", "match"), [
    ({"policy": "fastest"}, "unknown policy 'fastest'; known policies: ip_hash"),
    ({"backends": [{"name": "a", "url": "http://127.0.0.1:9000", "weight": -2}]}, "weight must be a number in"),
    ({"backends": [{"name": "a", "url": "http://127.0.0.1:9000", "weight": "heavy"}]}, "weight must be a number"),
    ({"backends": [{"name": "a", "url": "ftp://x"}]}, "must look like http://HOST:PORT"),
    ({"backends": [{"name": "a b", "url": "http://127.0.0.1:1"}]}, "backend name must match"),
    ({"policy": "ring_hash", "policy_params": {"key": "query:x"}}, "policy_params are not valid for ring_hash"),
    ({"health": {"interval_s": 0}}, "health.interval_s must be a number > 0"),
    ({"retry": {"attempts": 2, "tries": 3}}, "unknown field(s) ['tries']"),
    ({"models": []}, "needs `models` or a `path_prefix`"),
])
def test_bad_configs_say_what_and_where(tmp_path: Path, change: dict[str, object], match: str) -> None:
    path = tmp_path / "gw.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"routes": [_route(**change)]}))
    with pytest.raises(GatewayConfigError) as info:
        load_config(path)
    assert match in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_policy_is_its_own_error_type(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("routes:\n  - {name: r, models: [m], policy: nope}\n")
    with pytest.raises(UnknownPolicyError) as info:
        load_config(path)
    assert info.value.name == "nope" and info.value.source == str(path)


def test_top_level_checks() -> None:
    with pytest.raises(GatewayConfigError, match="serve the model 'm' twice"):
        config_from_dict({"routes": [_route(), {**_route(), "name": "r2"}]})
    with pytest.raises(GatewayConfigError, match="port"):
        config_from_dict({"port": 70000})
    with pytest.raises(GatewayConfigError, match="cannot be read"):
        load_config("/nonexistent/gw.yaml")
    assert config_from_dict({"workers": 0}).num_workers >= 1


def test_the_data_path_is_lean_unless_aiohttp_is_asked_for() -> None:
    assert config_from_dict({"routes": [_route()]}).server == "lean"
    assert config_from_dict({"server": "aiohttp", "routes": [_route()]}).server == "aiohttp"
    with pytest.raises(GatewayConfigError, match="server must be one of lean, aiohttp, got 'nginx'"):
        config_from_dict({"server": "nginx", "routes": [_route()]})
    with pytest.raises(GatewayConfigError, match="cached_cost must be a number >= 0"):
        config_from_dict({"routes": [_route(policy="prefix_aware", policy_params={"cached_cost": -1})]})

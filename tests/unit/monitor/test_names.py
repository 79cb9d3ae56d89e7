"""The metric-name contract: naming rules, owners, and agreement with what the code exports."""

from __future__ import annotations

import pytest

from granary.monitor import names


def test_contract_follows_the_naming_rules() -> None:
    names.validate_contract()
    assert len(names.CONTRACT) == len(names.MONITOR + names.GATEWAY + names.TRAIN)


@pytest.mark.parametrize(("name", "owner"), [("granary_gpu_up", "monitor"), ("granary_gateway_queue_depth", "serve"),
                                             ("granary_train_loss", "train"), ("granary_server_requests_total",
                                                                                "server")])
def test_owner_by_prefix(name: str, owner: str) -> None:
    assert names.owner_of(name) == owner


@pytest.mark.parametrize("bad", ["node_cpu", "granary_Bad", "granary_unknown_thing", "granary_"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="metric name"):
        names.owner_of(bad)


def test_gateway_names_match_the_gateway_module() -> None:
    pc = pytest.importorskip("prometheus_client")
    from granary.serve.metrics import GatewayMetrics

    registry = pc.CollectorRegistry()
    GatewayMetrics(registry)
    exported = {}
    for fam in registry.collect():
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        exported[name] = fam.type
    expected = {m.name: m.kind for m in names.GATEWAY}
    assert exported == expected


def test_histograms_expand_to_three_series() -> None:
    m = names.CONTRACT["granary_gateway_request_duration_seconds"]
    assert names.series_names(m) == ("granary_gateway_request_duration_seconds_bucket",
                                     "granary_gateway_request_duration_seconds_sum",
                                     "granary_gateway_request_duration_seconds_count")
    assert "granary_gateway_request_duration_seconds_count" in names.exported_series()

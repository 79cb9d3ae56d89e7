"""deploy/: Prometheus config and rules checked with promtool, dashboards generated from code, and every
metric a rule or a panel queries is one that Granary exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from granary.monitor.dashboards import dashboards, queried_metrics
from granary.monitor.names import exported_series

ROOT = Path(__file__).resolve().parents[3]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install "
                                    "prometheus; .ci/run does it)")


def _promtool(*args: str, cwd: Path) -> None:
    assert PROMTOOL is not None
    res = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_committed_dashboards_match_the_generator() -> None:
    for name, model in dashboards().items():
        committed = json.loads((GRAFANA / "dashboards" / name).read_text())
        assert committed == model, f"{name} is stale: run python -m granary.monitor.dashboards"


def test_every_panel_queries_exported_metrics() -> None:
    exported = exported_series()
    for name, model in dashboards().items():
        unknown = queried_metrics(model) - exported
        assert not unknown, f"{name} queries metrics nobody exports: {sorted(unknown)}"


def test_a_panel_on_an_unknown_metric_is_caught() -> None:
    model = {"panels": [{"targets": [{"expr": "rate(granary_node_nonexistent_total[1m])"}]}]}
    assert queried_metrics(model) - exported_series() == {"granary_node_nonexistent_total"}


def test_every_rule_queries_exported_metrics() -> None:
    rules = yaml.safe_load((PROM / "rules" / "granary.rules.yml").read_text())
    exported = exported_series()
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = set(re.findall(r"\b(granary_[a-z0-9_]+)\b", rule["expr"])) - exported
            assert not unknown, f"rule {rule.get('alert') or rule.get('record')} queries {sorted(unknown)}"


@needs_promtool
def test_promtool_checks_config_rules_and_rule_tests() -> None:
    _promtool("check", "config", "prometheus.yml", cwd=PROM)
    _promtool("check", "rules", "rules/granary.rules.yml", cwd=PROM)
    _promtool("test", "rules", "granary.rules.test.yml", cwd=PROM / "rules")


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = [{"record": f"granary_dashboard:q{i}", "expr": t["expr"]}
             for i, t in enumerate(t for m in dashboards().values() for p in m["panels"] for t in p["targets"])]
    (tmp_path / "q.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    _promtool("check", "rules", "q.yml", cwd=tmp_path)


def test_docs_list_every_metric_and_detector() -> None:
    from granary.monitor.names import MONITOR, TRAIN
    from granary.monitor.watcher import DETECTORS

    doc = (ROOT / "docs" / "watch.md").read_text()
    missing = [m.name for m in MONITOR + TRAIN if f"`{m.name}`" not in doc]
    assert not missing, f"docs/watch.md does not list {missing}"
    headings = set(re.findall(r"^### (\w+)$", doc, flags=re.M))
    assert set(DETECTORS) <= headings, f"no runbook section for {set(DETECTORS) - headings}"

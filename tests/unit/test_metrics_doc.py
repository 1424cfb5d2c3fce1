"""docs/metrics.md and the Grafana dashboard name exactly the metrics the server exports."""

from __future__ import annotations

import json
import re

from prometheus_client import generate_latest

from homeport.agent.node import NodeInventory
from homeport.server.metrics import Metrics, StateCollector
from homeport.server.services.nodes import NodeRecord
from tests.conftest import REPO


def _exported() -> set[str]:
    metrics = Metrics()
    node = NodeInventory("n1", 0.0, 2, 0.5, 1024, 128, ("T4",), 0, 1)
    metrics.watch(StateCollector(lambda: {"fu-1": 2}, lambda: [NodeRecord(node, 0.0, True)], metrics.names))
    metrics.input_finished("fu-1", 1, 0.1)
    metrics.inputs_taken("fu-1", [0.1])
    metrics.container_started("n1", "forked", 0.02)
    metrics.http_request("main", "app-fn", 200, 0.01)
    metrics.image_built(True, 3.0)
    text = generate_latest(metrics.registry).decode()
    return set(re.findall(r"^# TYPE (homeport_\w+) ", text, re.MULTILINE))


def test_the_metrics_doc_lists_every_exported_metric_and_nothing_else() -> None:
    documented = set(re.findall(r"`(homeport_\w+)`", (REPO / "docs" / "metrics.md").read_text()))
    assert documented == _exported()


def test_the_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads((REPO / "docs" / "grafana" / "homeport.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"homeport_\w+", expr)
    }
    assert used <= _exported(), used - _exported()

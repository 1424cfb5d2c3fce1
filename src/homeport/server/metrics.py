"""Prometheus metrics: what runs, how long inputs wait and take, containers started, web
requests, image builds, and what each node holds against its capacity.

Each server keeps its own registry (so one process may hold several servers, as the tests
do); `homeport serve --metrics-port N` serves it at http://HOST:N/metrics. docs/metrics.md
lists every metric. Recording is a dictionary lookup and a counter increment: it sits on
the per-input path.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from modal_proto import api_pb2
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from homeport.server.store.hosting import run_long

# No `*_created` series beside every counter and histogram: they double the scrape and
# nothing here reads them.
disable_created_metrics()

# (workspace, app, function) names of a function id, for labels.
FunctionNames = tuple[str, str, str]

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


def status_name(status: int) -> str:
    """GENERIC_STATUS_SUCCESS -> "success"."""
    return api_pb2.GenericResult.GenericStatus.Name(status).removeprefix("GENERIC_STATUS_").lower()  # type: ignore[arg-type]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        function_labels = ["workspace", "app", "function"]
        self.inputs = Counter(
            "homeport_inputs",
            "Inputs that finished, by outcome (success, failure, timeout, terminated, init_failure)",
            [*function_labels, "status"],
            registry=self.registry,
        )
        self.input_duration = Histogram(
            "homeport_input_duration_seconds",
            "Time from a container taking an input to its result",
            function_labels,
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.input_queue = Histogram(
            "homeport_input_queue_seconds",
            "Time an input waited in the queue before a container took it",
            function_labels,
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.container_starts = Counter(
            "homeport_container_starts",
            "Containers started, by kind (forked from a zygote, fresh interpreter, gvisor)",
            ["node", "kind"],
            registry=self.registry,
        )
        self.container_start = Histogram(
            "homeport_container_start_seconds",
            "Time for the node to start a container (until its entrypoint runs)",
            ["node", "kind"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "homeport_http_requests",
            "Web endpoint requests answered by the gateway, by status code",
            ["workspace", "endpoint", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "homeport_http_request_duration_seconds",
            "Web endpoint request latency through the gateway",
            ["workspace", "endpoint"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.image_builds = Histogram(
            "homeport_image_build_seconds",
            "Image build durations, by outcome",
            ["status"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        )
        self._names: dict[str, FunctionNames] = {}
        self.resolve_names: Callable[[str], FunctionNames] = lambda function_id: ("", "", function_id)

    def names(self, function_id: str) -> FunctionNames:
        names = self._names.get(function_id)
        if names is None:
            try:
                names = self.resolve_names(function_id)
            except Exception:
                names = ("", "", function_id)
            self._names[function_id] = names
        return names

    # --- recording --------------------------------------------------------------------------

    def inputs_taken(self, function_id: str, queued_seconds: Iterable[float]) -> None:
        histogram = self.input_queue.labels(*self.names(function_id))
        for seconds in queued_seconds:
            histogram.observe(max(seconds, 0.0))

    def input_finished(self, function_id: str, status: int, running_s: float | None) -> None:
        names = self.names(function_id)
        self.inputs.labels(*names, status_name(status)).inc()
        if running_s is not None:
            self.input_duration.labels(*names).observe(max(running_s, 0.0))

    def container_started(self, node: str, kind: str, seconds: float) -> None:
        self.container_starts.labels(node, kind).inc()
        self.container_start.labels(node, kind).observe(seconds)

    def http_request(self, workspace: str, endpoint: str, status: int, seconds: float) -> None:
        self.http_requests.labels(workspace, endpoint, str(status)).inc()
        self.http_duration.labels(workspace, endpoint).observe(seconds)

    def image_built(self, succeeded: bool, seconds: float) -> None:
        self.image_builds.labels("success" if succeeded else "failure").observe(seconds)

    def watch(self, collector: Collector) -> None:
        """Gauges read at scrape time (queue backlogs, node capacity)."""
        self.registry.register(collector)


class StateCollector(Collector):
    """Gauges from the server's own state, read when Prometheus scrapes."""

    def __init__(
        self,
        backlog: Callable[[], dict[str, int]],
        inventories: Callable[[], collections.abc.Sequence[Any]],
        names: Callable[[str], FunctionNames],
    ) -> None:
        self._backlog = backlog
        self._inventories = inventories
        self._names = names

    def collect(self) -> Iterable[GaugeMetricFamily]:
        backlog = GaugeMetricFamily(
            "homeport_queue_backlog",
            "Inputs waiting for a container",
            labels=["workspace", "app", "function"],
        )
        for function_id, count in self._backlog().items():
            backlog.add_metric(list(self._names(function_id)), count)
        yield backlog
        families = {
            "running": GaugeMetricFamily(
                "homeport_containers_running", "Containers running on a node", labels=["node"]
            ),
            "cpus": GaugeMetricFamily("homeport_node_cpu_cores", "CPU cores of a node", labels=["node"]),
            "busy": GaugeMetricFamily(
                "homeport_node_cpu_busy_ratio", "Fraction of a node's CPU time busy", labels=["node"]
            ),
            "memory": GaugeMetricFamily(
                "homeport_node_memory_capacity_bytes",
                "Memory containers may reserve on a node",
                labels=["node"],
            ),
            "reserved": GaugeMetricFamily(
                "homeport_node_memory_reserved_bytes",
                "Memory reserved by a node's containers",
                labels=["node"],
            ),
            "gpus": GaugeMetricFamily(
                "homeport_node_gpus", "GPUs of a node, by model", labels=["node", "model"]
            ),
            "gpus_busy": GaugeMetricFamily(
                "homeport_node_gpus_allocated", "GPUs held by containers", labels=["node"]
            ),
            "seen": GaugeMetricFamily(
                "homeport_node_last_seen_timestamp_seconds", "When a node last reported", labels=["node"]
            ),
        }
        for record in self._inventories():
            node = record.inventory
            families["running"].add_metric([node.node_id], node.containers)
            families["cpus"].add_metric([node.node_id], node.cpu_count)
            families["busy"].add_metric([node.node_id], node.cpu_busy)
            families["memory"].add_metric([node.node_id], node.memory_budget_mib * 2**20)
            families["reserved"].add_metric([node.node_id], node.memory_reserved_mib * 2**20)
            for model in sorted(set(node.gpus)):
                families["gpus"].add_metric([node.node_id, model], node.gpus.count(model))
            families["gpus_busy"].add_metric([node.node_id], node.gpus_busy)
            families["seen"].add_metric([node.node_id], record.last_seen)
        yield from families.values()


async def serve_metrics(metrics: Metrics, host: str, port: int, engine: sa.Engine) -> web.AppRunner:
    """Serve /metrics on its own port; returns the runner to clean up."""

    async def scrape(request: web.Request) -> web.Response:
        # The gauges read the database: off the event loop.
        body = await run_long(engine, generate_latest, metrics.registry)  # collectors read the database
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    application = web.Application()
    application.add_routes([web.get("/metrics", scrape)])
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

"""`modal function metrics` and `Function.metrics.export()`: a function's time series, in
buckets, computed from what was recorded (inputs, containers, usage). Series names end
with their aggregation (`_count`, `_avg`, `_max`), which client 1.6.4 reads off the name."""

from __future__ import annotations

import dataclasses
import math

from modal_proto import api_pb2

from homeport.server.services.stats import StatsService

MIN_BUCKET_S = 60
TARGET_BUCKETS = 100
MAX_BUCKETS = 500
MAX_RANGE_S = 31 * 86400


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    title: str
    description: str


GROUPS: dict[str, tuple[str, str, list[Metric]]] = {
    "calls": (
        "Calls",
        "Inputs taken, their outcomes and execution time",
        [
            Metric("calls_started_count", "calls", "Started", "Inputs a container took"),
            Metric("calls_succeeded_count", "calls", "Succeeded", "Inputs that finished successfully"),
            Metric("calls_failed_count", "calls", "Failed", "Inputs that finished with a failure or timeout"),
            Metric(
                "calls_execution_time_avg",
                "s",
                "Execution time",
                "Mean time from a container taking an input to its result",
            ),
        ],
    ),
    "containers": (
        "Containers",
        "Containers of the function",
        [
            Metric("containers_started_count", "containers", "Started", "Containers started"),
            Metric(
                "containers_active_max", "containers", "Active", "Containers alive at some time in the bucket"
            ),
        ],
    ),
    "cpu": (
        "CPU",
        "CPU time used",
        [Metric("cpu_usage_avg", "cores", "Usage", "Mean cores used by the function's containers")],
    ),
    "memory": (
        "Memory",
        "Memory used",
        [Metric("memory_peak_max", "GiB", "Peak", "Highest peak memory of a container alive in the bucket")],
    ),
}


class MetricsRangeError(ValueError):
    pass


def resolve_window(since: float, until: float, bucket_secs: int) -> tuple[int, int, int]:
    """(start, stop, bucket width): the range rounded down to whole buckets."""
    if since >= until:
        raise MetricsRangeError("`since` must be before `until`")
    if until - since > MAX_RANGE_S:
        raise MetricsRangeError("the range may span at most 31 days")
    width = bucket_secs or max(
        MIN_BUCKET_S, math.ceil((until - since) / TARGET_BUCKETS / MIN_BUCKET_S) * MIN_BUCKET_S
    )
    if width < MIN_BUCKET_S:
        raise MetricsRangeError(f"buckets must be at least {MIN_BUCKET_S} s")
    start, stop = int(since) // width * width, int(until) // width * width
    if (stop - start) // width > MAX_BUCKETS:
        raise MetricsRangeError(f"at most {MAX_BUCKETS} buckets per series; use larger buckets")
    return start, max(stop, start + width), width


def schema(groups: list[str]) -> list[api_pb2.MetricGroupDefinition]:
    """One definition per series, grouped by name: client 1.6.4 shows each definition as a
    row of its group ("display name (unit)", description)."""
    chosen = groups or sorted(GROUPS)
    unknown = [group for group in chosen if group not in GROUPS]
    if unknown:
        raise MetricsRangeError(f"unknown metric groups {unknown}; this server has {sorted(GROUPS)}")
    return [
        api_pb2.MetricGroupDefinition(
            name=group,
            display_name=metric.title,
            description=metric.description,
            metrics=[
                api_pb2.MetricDefinition(name=metric.name, unit=metric.unit, description=metric.description)
            ],
        )
        for group in chosen
        for metric in GROUPS[group][2]
    ]


def series(
    stats: StatsService, family: list[str], groups: list[str], start: int, stop: int, width: int
) -> list[api_pb2.FunctionMetricSeries]:
    buckets = list(range(start, stop, width))

    def index(moment: float) -> int | None:
        position = int((moment - start) // width)
        return position if 0 <= position < len(buckets) else None

    values: dict[str, list[float | None]] = {}
    chosen = groups or sorted(GROUPS)
    if "calls" in chosen:
        started, succeeded, failed = [0.0] * len(buckets), [0.0] * len(buckets), [0.0] * len(buckets)
        durations: list[list[float]] = [[] for _ in buckets]
        for record in stats.inputs(family, start - 86400, stop):
            if record.claimed_at and (at := index(record.claimed_at)) is not None:
                started[at] += 1
            if record.finished_at and (at := index(record.finished_at)) is not None:
                if record.status == api_pb2.GenericResult.GENERIC_STATUS_SUCCESS:
                    succeeded[at] += 1
                else:
                    failed[at] += 1
                if record.claimed_at:
                    durations[at].append(record.finished_at - record.claimed_at)
        values["calls_started_count"] = list(started)
        values["calls_succeeded_count"] = list(succeeded)
        values["calls_failed_count"] = list(failed)
        values["calls_execution_time_avg"] = [sum(d) / len(d) if d else None for d in durations]
    if "containers" in chosen:
        started_containers, active = [0.0] * len(buckets), [0.0] * len(buckets)
        for row in stats.containers(family, start, stop):
            if (at := index(row.created_at)) is not None:
                started_containers[at] += 1
            for position, bucket in enumerate(buckets):
                if row.created_at < bucket + width and (row.stopped_at is None or row.stopped_at >= bucket):
                    active[position] += 1
        values["containers_started_count"] = list(started_containers)
        values["containers_active_max"] = list(active)
    if "cpu" in chosen or "memory" in chosen:
        cores: list[float | None] = [None] * len(buckets)
        peak: list[float | None] = [None] * len(buckets)
        for row in stats.usage(family, start, stop):
            lived = max(row.stopped_at - row.started_at, 1e-3)
            for position, bucket in enumerate(buckets):
                overlap = min(row.stopped_at, bucket + width) - max(row.started_at, bucket)
                if overlap <= 0:
                    continue
                cores[position] = (cores[position] or 0.0) + row.cpu_seconds / lived * overlap / width
                peak[position] = max(peak[position] or 0.0, row.memory_peak_mib / 1024)
        values["cpu_usage_avg"], values["memory_peak_max"] = cores, peak
    result = []
    for group in chosen:
        for metric in GROUPS[group][2]:
            points = []
            for bucket, value in zip(buckets, values[metric.name], strict=True):
                point = api_pb2.FunctionMetricPoint()
                point.timestamp.FromSeconds(bucket)
                if value is not None:
                    point.value = value
                points.append(point)
            result.append(
                api_pb2.FunctionMetricSeries(
                    name=metric.name, unit=metric.unit, description=metric.description, points=points
                )
            )
    return result

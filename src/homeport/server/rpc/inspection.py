"""What the client's inspection commands ask: `Function.get_current_stats()`, `modal
function info` (autoscaler settings), `modal function stats|calls` and `modal app stats`,
answered from recorded inputs, containers and usage."""

from __future__ import annotations

import asyncio
import time

from google.protobuf.timestamp_pb2 import Timestamp
from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler, times
from homeport.server.scheduler import DEFAULT_IDLE_S
from homeport.server.services import autoscaling, function_metrics
from homeport.server.services import functions as catalog
from homeport.server.services.stats import InputRecord, StatsService, distribution
from homeport.server.store.hosting import run_long

GENERIC = api_pb2.GenericResult
DEFAULT_WINDOW_S = 3600.0
MAX_CALLS = 1000


def _stamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _window(since: Timestamp, until: Timestamp, has_since: bool, has_until: bool) -> tuple[float, float]:
    end = times.seconds(until, "until") if has_until else time.time()
    start = times.seconds(since, "since") if has_since else end - DEFAULT_WINDOW_S
    if start >= end:
        raise errors.invalid_argument(
            "the time range's start is not before its end; give --since before --until"
        )
    return start, end


def _stats(context: RequestContext) -> StatsService:
    return StatsService(context.state.engine)


@handler("FunctionGetCurrentStats")
async def function_get_current_stats(
    context: RequestContext, request: api_pb2.FunctionGetCurrentStatsRequest
) -> api_pb2.FunctionStats:
    """Client 1.6.4 answers `Function.get_current_stats()` with this message as it is."""
    family = set(_stats(context).family(request.function_id, with_variants=True))
    pending = context.state.calls.pending_counts()
    containers = [
        running
        for running in context.state.scheduler.containers.values()
        if running.function_id in family and not running.stop_reason
    ]
    return api_pb2.FunctionStats(
        backlog=sum(pending.get(function_id, 0) for function_id in family),
        num_total_tasks=len(containers),
        num_running_inputs=sum(len(running.inputs) for running in containers),
        input_headroom=sum(running.free_slots for running in containers),
    )


@handler("FunctionGetSchedulingParams")
async def function_get_scheduling_params(
    context: RequestContext, request: api_pb2.FunctionGetSchedulingParamsRequest
) -> api_pb2.FunctionGetSchedulingParamsResponse:
    definition, _ = catalog.effective_definition(
        context.state.apps, context.state.apps.function(request.function_id)
    )
    current = autoscaling.autoscaling(definition, DEFAULT_IDLE_S)
    settings = api_pb2.AutoscalerSettings(
        min_containers=current.min_containers,
        buffer_containers=current.buffer_containers,
        scaledown_window=int(current.scaledown_window_s),
    )
    if current.max_containers:
        settings.max_containers = current.max_containers
    response = api_pb2.FunctionGetSchedulingParamsResponse()
    response.autoscaler_configuration.settings.CopyFrom(settings)
    return response


def _outcomes(finished: list[InputRecord]) -> tuple[int, int, int]:
    """(succeeded, failed, timed out)."""
    succeeded = sum(1 for record in finished if record.status == GENERIC.GENERIC_STATUS_SUCCESS)
    timed_out = sum(1 for record in finished if record.status == GENERIC.GENERIC_STATUS_TIMEOUT)
    return succeeded, len(finished) - succeeded - timed_out, timed_out


@handler("FunctionGetTimeRangeStats")
async def function_get_time_range_stats(
    context: RequestContext, request: api_pb2.FunctionGetTimeRangeStatsRequest
) -> api_pb2.FunctionGetTimeRangeStatsResponse:
    start, end = _window(request.since, request.until, request.HasField("since"), request.HasField("until"))
    stats = _stats(context)
    family = stats.family(request.function_id, with_variants=request.rollup)
    finished, containers, usage, running = await asyncio.gather(
        run_long(context.state.engine, stats.finished_between, family, start, end),
        run_long(context.state.engine, stats.containers, family, start, end),
        run_long(context.state.engine, stats.usage, family, start, end),
        run_long(context.state.engine, stats.running_at, family, end),
    )
    if request.container_id:
        finished = [record for record in finished if record.task_id == request.container_id]
        containers = [row for row in containers if row.id == request.container_id]
    succeeded, failed, timed_out = _outcomes(finished)
    response = api_pb2.FunctionGetTimeRangeStatsResponse(
        input_success_count=succeeded,
        input_failure_count=failed,
        input_timeout_count=timed_out,
        input_running_at_end_count=running,
        container_started_count=sum(1 for row in containers if row.created_at >= start),
        container_error_count=sum(1 for row in containers if row.exit_code not in (None, 0)),
        container_creating_at_end_count=sum(1 for row in containers if row.state == "starting"),
        container_total_count=len(containers),
        variant_count=max(len(stats.family(request.function_id, with_variants=True)) - 1, 0),
    )
    response.since.CopyFrom(_stamp(start))
    response.until.CopyFrom(_stamp(end))
    inputs = {
        "Execution time (s)": [
            r.finished_at - r.claimed_at for r in finished if r.finished_at and r.claimed_at
        ],
        "End-to-end latency (s)": [r.finished_at - r.created_at for r in finished if r.finished_at],
    }
    for name, values in inputs.items():
        if (spread := distribution(values, "s")) is not None:
            response.input_percentile_stats[name].CopyFrom(spread)
    lived = [(row, max(row.stopped_at - row.started_at, 1e-3)) for row in usage]
    containers_spread = {
        "CPU Usage (cores)": ([row.cpu_seconds / seconds for row, seconds in lived], "cores"),
        "Memory Usage (GiB)": ([row.memory_peak_mib / 1024 for row, _ in lived], "GiB"),
    }
    for name, (values, unit) in containers_spread.items():
        if (spread := distribution(values, unit)) is not None:
            response.container_percentile_stats[name].CopyFrom(spread)
    return response


@handler("AppGetTimeRangeStats")
async def app_get_time_range_stats(
    context: RequestContext, request: api_pb2.AppGetTimeRangeStatsRequest
) -> api_pb2.AppGetTimeRangeStatsResponse:
    app = context.state.apps.get(context.workspace_id, request.app_id)
    start, end = _window(request.since, request.until, request.HasField("since"), request.HasField("until"))
    stats = _stats(context)
    response = api_pb2.AppGetTimeRangeStatsResponse()
    response.since.CopyFrom(_stamp(start))
    response.until.CopyFrom(_stamp(end))
    total = response.functions.total
    for function in context.state.apps.app_functions(app.id):
        family = stats.family(function.id, with_variants=True)
        queued = await run_long(context.state.engine, stats.inputs, family, start, end)
        containers = await run_long(context.state.engine, stats.containers, family, start, end)
        succeeded, failed, timed_out = _outcomes([record for record in queued if record.state == "done"])
        counts = response.functions.by_name[function.tag]
        counts.object_id = function.id
        counts.counts.calls.total = len(queued)
        counts.counts.calls.succeeded = succeeded
        counts.counts.calls.failed = failed + timed_out
        counts.counts.containers.container_errors = sum(
            1 for row in containers if row.exit_code not in (None, 0)
        )
        counts.counts.containers.container_active_count = sum(
            1 for row in containers if row.stopped_at is None
        )
        for field in ("total", "succeeded", "failed"):
            setattr(total.calls, field, getattr(total.calls, field) + getattr(counts.counts.calls, field))
        total.containers.container_errors += counts.counts.containers.container_errors
        total.containers.container_active_count += counts.counts.containers.container_active_count
    lifecycle = response.lifecycle
    lifecycle.app_state = app.state  # type: ignore[assignment]
    lifecycle.created_at = app.created_at
    lifecycle.stopped_at = app.stopped_at or 0.0
    return response


def _call_info(record: InputRecord) -> api_pb2.FunctionCallInputInfo:
    info = api_pb2.FunctionCallInputInfo(function_call_id=record.function_call_id, status=record.call_status)  # type: ignore[arg-type]
    info.enqueued_at.CopyFrom(_stamp(record.created_at))
    if record.claimed_at:
        info.started_at.CopyFrom(_stamp(record.claimed_at))
    if record.task_id and not record.task_id.startswith("failed-start:"):
        info.container_id = record.task_id
    if record.finished_at and record.claimed_at:
        info.execution_time_seconds = record.finished_at - record.claimed_at
    return info


@handler("FunctionCallFetch")
async def function_call_fetch(
    context: RequestContext, request: api_pb2.FunctionCallFetchRequest
) -> api_pb2.FunctionCallFetchResponse:
    """The function's inputs, newest first: the last `tail.count`, or those queued in a range."""
    stats = _stats(context)
    family = stats.family(request.function_id, with_variants=request.all_variants)
    if request.HasField("range"):
        window = request.range
        start, end = _window(window.since, window.until, window.HasField("since"), window.HasField("until"))
        records = await run_long(context.state.engine, stats.inputs, family, start, end)
        records = records[: window.limit or MAX_CALLS]
    else:
        count = min(request.tail.count or 10, MAX_CALLS)
        records = await run_long(context.state.engine, stats.inputs, family, 0.0, 0.0, count)
    return api_pb2.FunctionCallFetchResponse(function_call_inputs=[_call_info(record) for record in records])


@handler("FunctionCallCount")
async def function_call_count(
    context: RequestContext, request: api_pb2.FunctionCallCountRequest
) -> api_pb2.FunctionCallCountResponse:
    """Inputs queued per bucket of `bucket_secs`, oldest bucket first."""
    start, end = _window(request.since, request.until, request.HasField("since"), request.HasField("until"))
    stats = _stats(context)
    records = await run_long(
        context.state.engine,
        stats.inputs,
        stats.family(request.function_id, with_variants=request.all_variants),
        start,
        end,
    )
    width = max(request.bucket_secs, 1)
    per_bucket: dict[int, int] = {}
    for record in records:
        index = int((record.created_at - start) // width)
        per_bucket[index] = per_bucket.get(index, 0) + 1
    response = api_pb2.FunctionCallCountResponse()
    for index in range(times.bucket_count(start, end, width)):
        bucket = response.buckets.add(count=per_bucket.get(index, 0))
        bucket.bucket_start_at.CopyFrom(_stamp(start + index * width))
    return response


@handler("MetricsGetInfo")
async def metrics_get_info(
    context: RequestContext, request: api_pb2.MetricsGetInfoRequest
) -> api_pb2.MetricsGetInfoResponse:
    """The series `modal function metrics` can export, and the buckets a range would have."""
    start, stop, width = _metrics_window(request)
    try:
        groups = function_metrics.schema(list(request.groups))
    except function_metrics.MetricsRangeError as error:
        raise errors.invalid_argument(str(error)) from None
    return api_pb2.MetricsGetInfoResponse(
        groups=groups, bucket_secs=width, bucket_count=(stop - start) // width
    )


@handler("FunctionGetMetrics")
async def function_get_metrics(
    context: RequestContext, request: api_pb2.FunctionGetMetricsRequest
) -> api_pb2.FunctionGetMetricsResponse:
    start, stop, width = _metrics_window(request)
    stats = _stats(context)
    family = stats.family(request.function_id, with_variants=request.rollup)
    try:
        function_metrics.schema(list(request.groups))
    except function_metrics.MetricsRangeError as error:
        raise errors.invalid_argument(str(error)) from None
    series = await run_long(
        context.state.engine, function_metrics.series, stats, family, list(request.groups), start, stop, width
    )
    response = api_pb2.FunctionGetMetricsResponse(bucket_secs=width, series=series)
    response.since.FromSeconds(start)
    response.until.FromSeconds(stop)
    return response


def _metrics_window(
    request: api_pb2.MetricsGetInfoRequest | api_pb2.FunctionGetMetricsRequest,
) -> tuple[int, int, int]:
    until = times.seconds(request.until, "until") if request.HasField("until") else time.time()
    since = times.seconds(request.since, "since") if request.HasField("since") else until - DEFAULT_WINDOW_S
    try:
        return function_metrics.resolve_window(since, until, request.bucket_secs)
    except function_metrics.MetricsRangeError as error:
        raise errors.invalid_argument(str(error)) from None

"""Log RPCs: AppGetLogs (live stream, ends with app_done), AppFetchLogs (history) and
AppCountLogs (how many entries, per bucket of time)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable

from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler, times
from homeport.server.services.apps import app_done_key
from homeport.server.services.logs import FD_INFO, FD_STDERR, FD_STDOUT, LogEntry, logs_key

MAX_POLL_S = 55.0


def _batches(entries: list[LogEntry]) -> list[api_pb2.TaskLogsBatch]:
    batches = []
    for (task_id, function_id), group in itertools.groupby(entries, key=lambda e: (e.task_id, e.function_id)):
        grouped = list(group)
        batches.append(
            api_pb2.TaskLogsBatch(
                task_id=task_id,
                function_id=function_id,
                entry_id=str(grouped[-1].seq),
                items=[
                    api_pb2.TaskLogs(
                        data=e.data,
                        file_descriptor=e.file_descriptor,  # type: ignore[arg-type]
                        timestamp=e.timestamp,
                        container_id=e.task_id,
                    )
                    for e in grouped
                ],
            )
        )
    return batches


@handler("AppGetLogs")
async def app_get_logs(
    context: RequestContext,
    request: api_pb2.AppGetLogsRequest,
    send: Callable[[api_pb2.TaskLogsBatch], Awaitable[None]],
) -> None:
    """Stream logs after `last_entry_id` for up to `timeout` seconds; once the app has
    stopped and everything is sent, send `app_done` (client 1.6.4 stops only on that)."""
    app = context.state.apps.get(context.workspace_id, request.app_id)
    after = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
    deadline = time.monotonic() + min(max(request.timeout, 0.0), MAX_POLL_S)
    function_id = request.function_id or request.parametrized_function_id
    while True:
        with context.state.notifier.listen(logs_key(app.id), app_done_key(app.id)) as listener:
            entries = context.state.logs.read(app.id, after, task_id=request.task_id, function_id=function_id)
            for batch in _batches(entries):
                await send(batch)
            if entries:
                after = entries[-1].seq
                continue
            if not context.state.apps.get(context.workspace_id, app.id).live:
                await send(api_pb2.TaskLogsBatch(app_done=True, entry_id=str(after)))
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await listener.wait(remaining)


@handler("AppFetchLogs")
async def app_fetch_logs(
    context: RequestContext, request: api_pb2.AppFetchLogsRequest
) -> api_pb2.AppFetchLogsResponse:
    app = context.state.apps.get(context.workspace_id, request.app_id)
    since = request.since.ToSeconds() if request.HasField("since") else None
    until = request.until.ToSeconds() + 1 if request.HasField("until") else None
    entries = context.state.logs.read(
        app.id,
        limit=request.limit or 100,
        task_id=request.task_id,
        function_id=request.function_id,
        since=since,
        until=until,
        newest_first=True,
    )
    entries.reverse()
    return api_pb2.AppFetchLogsResponse(batches=_batches(entries))


@handler("AppCountLogs")
async def app_count_logs(
    context: RequestContext, request: api_pb2.AppCountLogsRequest
) -> api_pb2.AppCountLogsResponse:
    """Entries per bucket and stream, oldest first: client 1.6.4 counts before it fetches a
    range (`modal app logs --since`), and fetches nothing where the counts are zero."""
    app = context.state.apps.get(context.workspace_id, request.app_id)
    until = times.seconds(request.until, "until") if request.HasField("until") else time.time()
    since = times.seconds(request.since, "since") if request.HasField("since") else until - 3600
    if since >= until:
        raise errors.invalid_argument(
            "the time range's start is not before its end; give --since before --until"
        )
    width = max(request.bucket_secs, 1)
    counts = context.state.logs.count(
        app.id, since, until, width, task_id=request.task_id, function_id=request.function_id
    )
    response = api_pb2.AppCountLogsResponse(app_id=app.id)
    for index in range(times.bucket_count(since, until, width)):
        bucket = response.buckets.add(
            stdout_logs=counts.get((index, FD_STDOUT), 0),
            stderr_logs=counts.get((index, FD_STDERR), 0),
            system_logs=counts.get((index, FD_INFO), 0),
        )
        bucket.bucket_start_at.FromNanoseconds(int((since + index * width) * 1e9))
    return response

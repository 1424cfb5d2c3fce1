"""RPCs containers make: hello, heartbeat, taking inputs, returning outputs, reporting
start-up failures. Each is authorised by the container's own credential and may touch
only the function that container serves."""

from __future__ import annotations

import logging
import time

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.running import stop_key
from homeport.server.services.calls import queue_key

log = logging.getLogger("homeport.scheduler")

# A container's FunctionGetInputs is answered (maybe empty) within this; it asks again at once.
GET_INPUTS_POLL_S = 20.0


@handler("ContainerHello")
async def container_hello(context: RequestContext, request: empty_pb2.Empty) -> empty_pb2.Empty:
    task = context.require_task()
    await context.state.scheduler.started(task.task_id)
    context.state.scheduler.on_hello(task.task_id)
    return empty_pb2.Empty()


@handler("ContainerCheckpoint")
async def container_checkpoint(
    context: RequestContext, request: api_pb2.ContainerCheckpointRequest
) -> empty_pb2.Empty:
    """enable_memory_snapshot=True: the container has imported its code and run its
    snap=True hooks. It closes its connections once this is answered, then waits for its
    restore state; the snapshot is taken in between (agent/memory_snapshots.py)."""
    task = context.require_task()
    await context.state.scheduler.started(task.task_id)
    context.state.scheduler.on_checkpoint(task.task_id)
    return empty_pb2.Empty()


@handler("ContainerHeartbeat")
async def container_heartbeat(
    context: RequestContext, request: api_pb2.ContainerHeartbeatRequest
) -> api_pb2.ContainerHeartbeatResponse:
    task = context.require_task()
    cancelled = context.state.calls.cancelled_inputs_of(task.task_id)
    response = api_pb2.ContainerHeartbeatResponse()
    if cancelled:
        response.cancel_input_event.input_ids.extend(cancelled)
    return response


@handler("FunctionGetInputs")
async def function_get_inputs(
    context: RequestContext, request: api_pb2.FunctionGetInputsRequest
) -> api_pb2.FunctionGetInputsResponse:
    task = context.require_task()
    if request.function_id != task.function_id:
        raise errors.permission_denied(
            f"container {task.task_id} serves {task.function_id}, not {request.function_id}"
        )
    scheduler = context.state.scheduler
    await scheduler.started(task.task_id)
    scheduler.on_ready(task.task_id)
    # Client 1.6.4 asserts that a response carries at most max(1, batch_max_size) inputs.
    limit = max(1, request.batch_max_size)
    deadline = time.monotonic() + GET_INPUTS_POLL_S
    while True:
        running = scheduler.container(task.task_id)
        with context.state.notifier.listen(queue_key(task.function_id), stop_key(task.task_id)) as listener:
            if running is None or running.stop_reason:
                (log.info if running is None else log.debug)(
                    "container %s asked for inputs %s: told to stop",
                    task.task_id, "after it ended" if running is None else f"while stopping ({running.stop_reason})",
                )  # fmt: skip
                return api_pb2.FunctionGetInputsResponse(
                    inputs=[api_pb2.FunctionGetInputsItem(kill_switch=True)]
                )
            claimed = context.state.calls.claim(task.function_id, task.task_id, limit)
            if claimed:
                scheduler.on_claimed(task.task_id, [c.input_id for c in claimed])
                if len(claimed) < limit and request.batch_linger_ms:
                    claimed += await _linger_for_batch(
                        context, task, limit - len(claimed), request.batch_linger_ms / 1000
                    )
                return api_pb2.FunctionGetInputsResponse(
                    inputs=[
                        api_pb2.FunctionGetInputsItem(
                            input_id=c.input_id,
                            input=c.payload,
                            function_call_id=c.function_call_id,
                            function_call_invocation_type=c.invocation_type,  # type: ignore[arg-type]
                            retry_count=c.attempt,
                            function_map_idx=c.idx,
                        )
                        for c in claimed
                    ]
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return api_pb2.FunctionGetInputsResponse()
            await listener.wait(remaining)


async def _linger_for_batch(context: RequestContext, task, room: int, linger_s: float) -> list:  # type: ignore[no-untyped-def]
    """@modal.batched(wait_ms=...): a batch that is not full waits that long for more inputs."""
    more: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + linger_s
    while len(more) < room:
        with context.state.notifier.listen(queue_key(task.function_id)) as listener:
            claimed = context.state.calls.claim(task.function_id, task.task_id, room - len(more))
            if claimed:
                context.state.scheduler.on_claimed(task.task_id, [c.input_id for c in claimed])
                more += claimed
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return more
            await listener.wait(remaining)
    return more


def _return_undelivered_inputs(
    context: RequestContext,
    request: api_pb2.FunctionGetInputsRequest,
    response: api_pb2.FunctionGetInputsResponse,
) -> None:
    task = context.require_task()
    for item in response.inputs:
        if item.input_id:
            context.state.scheduler.return_input(task.task_id, item.input_id)


function_get_inputs.on_undelivered = _return_undelivered_inputs  # type: ignore[attr-defined]


@handler("FunctionPutOutputs")
async def function_put_outputs(
    context: RequestContext, request: api_pb2.FunctionPutOutputsRequest
) -> empty_pb2.Empty:
    task = context.require_task()
    policy = context.state.scheduler.retry_policy(task.function_id)
    for item in request.outputs:
        # Outputs carry no function_call_id in 1.6.4: they are matched by input id, and
        # only from the container that holds the input.
        context.state.calls.finish(item.input_id, item.result, item.data_format, policy, task_id=task.task_id)
        context.state.scheduler.on_output(task.task_id, item.input_id)
    return empty_pb2.Empty()


@handler("TaskResult")
async def task_result(context: RequestContext, request: api_pb2.TaskResultRequest) -> empty_pb2.Empty:
    task = context.require_task()
    context.state.scheduler.on_task_result(task.task_id, request.result)
    return empty_pb2.Empty()


@handler("ContainerStop")
async def container_stop(
    context: RequestContext, request: api_pb2.ContainerStopRequest
) -> api_pb2.ContainerStopResponse:
    scheduler = context.state.scheduler
    running = scheduler.container(request.task_id)
    sandbox = context.state.sandboxes.by_task(request.task_id)
    if (
        running is None
        and sandbox is not None
        and sandbox.result is None
        and sandbox.workspace_id == context.workspace_id  # another workspace's: NOT_FOUND below
    ):
        context.state.sandboxes.terminate(sandbox.id)
        return api_pb2.ContainerStopResponse()
    if running is None:
        raise errors.not_found(f"container {request.task_id} is not running")
    context.state.apps.get(context.workspace_id, running.app_id)
    scheduler.request_stop(running, "stopped on request", interrupt=not request.graceful)
    return api_pb2.ContainerStopResponse()


@handler("TaskGetInfo")
async def task_get_info(
    context: RequestContext, request: api_pb2.TaskGetInfoRequest
) -> api_pb2.TaskGetInfoResponse:
    """What `modal container logs ID` and `modal container stop ID` look up first: the
    container's app and when it started and stopped."""
    task = context.state.scheduler.task_record(request.task_id)
    sandbox = context.state.sandboxes.by_task(request.task_id)
    if task is None and sandbox is not None and sandbox.workspace_id == context.workspace_id:
        info = api_pb2.TaskInfo(
            id=sandbox.task_id, enqueued_at=sandbox.created_at, started_at=sandbox.created_at
        )
        if sandbox.result is not None:
            info.finished_at = sandbox.finished_at
            info.result.CopyFrom(api_pb2.GenericResult.FromString(sandbox.result))
        return api_pb2.TaskGetInfoResponse(app_id=sandbox.app_id, info=info)
    if task is None or task.workspace_id != context.workspace_id:
        raise errors.not_found(f"container {request.task_id} not found")
    info = api_pb2.TaskInfo(id=task.id, enqueued_at=task.created_at, started_at=task.created_at)
    if task.stopped_at is not None:
        info.finished_at = task.stopped_at
        success = task.exit_code in (0, None)
        info.result.CopyFrom(
            api_pb2.GenericResult(
                status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
                if success
                else api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
                exception=task.stop_reason or "",  # why it stopped, as the server log says
            )
        )
    return api_pb2.TaskGetInfoResponse(app_id=task.app_id, info=info)


@handler("TaskList")
async def task_list(context: RequestContext, request: api_pb2.TaskListRequest) -> api_pb2.TaskListResponse:
    tasks = []
    for running in context.state.scheduler.containers.values():
        if request.app_id and running.app_id != request.app_id:
            continue
        app = context.state.apps.get("", running.app_id)
        if app.workspace_id != context.workspace_id:
            continue
        tasks.append(
            api_pb2.TaskStats(
                task_id=running.task_id,
                app_id=running.app_id,
                app_description=app.name or app.description,
                started_at=time.time() - (time.monotonic() - running.started_at),
            )
        )
    for row in context.state.sandboxes.running_rows(context.workspace_id, request.app_id):
        app = context.state.apps.get("", row.app_id)
        tasks.append(
            api_pb2.TaskStats(
                task_id=row.task_id,
                app_id=row.app_id,
                app_description=f"{app.name or app.description} (sandbox {row.id})",
                started_at=row.created_at,
            )
        )
    return api_pb2.TaskListResponse(tasks=tasks)

"""Invoking functions: FunctionMap / FunctionPutInputs in, FunctionGetOutputs out,
plus spawned-call lookup, cancellation, and generator data channels."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.notify import poll
from homeport.server.rpc import handler
from homeport.server.services.calls import data_key, outputs_key

# Client 1.6.4 sends at most 49 inputs per FunctionPutInputs and keeps up to this many
# outstanding; more than this per request is malformed.
MAX_INPUTS_PER_REQUEST = 1000
MAX_INPUTS_OUTSTANDING = 1000
MAX_OUTPUTS_PER_RESPONSE = 1000
MAX_INLINE_ARGS_BYTES = 4 * 1024 * 1024  # the client sends anything over 2 MiB as a blob
# Long-polls answer within this even if the client asks for longer.
MAX_POLL_S = 55.0


def input_jwt(function_call_id: str, input_id: str, idx: int) -> str:
    """An unsigned JWT: client 1.6.4 decodes input JWTs (without verifying) to read `idx`."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    payload = {"function_call_id": function_call_id, "input_id": input_id, "idx": idx}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


def _check_inputs(items: list[api_pb2.FunctionPutInputsItem]) -> None:
    if len(items) > MAX_INPUTS_PER_REQUEST:
        raise errors.invalid_argument(
            f"too many inputs in one request ({len(items)} > {MAX_INPUTS_PER_REQUEST})"
        )
    for item in items:
        if len(item.input.args) > MAX_INLINE_ARGS_BYTES:
            raise errors.invalid_argument(
                f"input {item.idx} carries {len(item.input.args)} bytes inline; arguments over "
                f"{MAX_INLINE_ARGS_BYTES} bytes must be uploaded as a blob"
            )


def _callable_function(context: RequestContext, function_id: str):  # type: ignore[no-untyped-def]
    function = context.state.apps.function(function_id)
    app = context.state.apps.get_recent(context.workspace_id, function.app_id)
    if not app.live:
        raise errors.failed_precondition(
            f"app {app.name or app.id} is stopped; its functions take no new inputs (redeploy or re-run it)"
        )
    if context.task is not None and context.task.app_id != app.id and app.name is None:
        raise errors.permission_denied("a container may only call functions of its own app or deployed apps")
    return function


@handler("FunctionMap")
async def function_map(
    context: RequestContext, request: api_pb2.FunctionMapRequest
) -> api_pb2.FunctionMapResponse:
    function = _callable_function(context, request.function_id)
    _check_inputs(list(request.pipelined_inputs))
    calls = context.state.calls
    items = [(item.idx, item.input) for item in request.pipelined_inputs]
    function_call_id, input_ids = calls.start_call(
        context.workspace_id,
        function.id,
        function.app_id,
        request.function_call_invocation_type,
        request.function_call_type,
        items,
    )
    context.state.scheduler.inputs_queued(function.id, len(items))
    definition = function.definition or api_pb2.Function()
    return api_pb2.FunctionMapResponse(
        function_call_id=function_call_id,
        pipelined_inputs=[
            api_pb2.FunctionPutInputsResponseItem(
                idx=idx, input_id=input_id, input_jwt=input_jwt(function_call_id, input_id, idx)
            )
            for (idx, _), input_id in zip(items, input_ids)
        ],
        retry_policy=definition.retry_policy,
        function_call_jwt=function_call_id,
        # Retries happen on the server (see services/calls.py), for every invocation type.
        sync_client_retries_enabled=False,
        max_inputs_outstanding=MAX_INPUTS_OUTSTANDING,
    )


@handler("FunctionPutInputs")
async def function_put_inputs(
    context: RequestContext, request: api_pb2.FunctionPutInputsRequest
) -> api_pb2.FunctionPutInputsResponse:
    _check_inputs(list(request.inputs))
    calls = context.state.calls
    call = calls.call(context.workspace_id, request.function_call_id)
    if call.function_id != request.function_id:
        raise errors.invalid_argument(
            f"function call {call.id} belongs to function {call.function_id}, not {request.function_id}"
        )
    items = [(item.idx, item.input) for item in request.inputs]
    input_ids = calls.enqueue(call.id, call.function_id, items)
    context.state.scheduler.inputs_queued(call.function_id, len(items))
    return api_pb2.FunctionPutInputsResponse(
        inputs=[
            api_pb2.FunctionPutInputsResponseItem(
                idx=idx, input_id=input_id, input_jwt=input_jwt(call.id, input_id, idx)
            )
            for (idx, _), input_id in zip(items, input_ids)
        ]
    )


@handler("FunctionGetOutputs")
async def function_get_outputs(
    context: RequestContext, request: api_pb2.FunctionGetOutputsRequest
) -> api_pb2.FunctionGetOutputsResponse:
    calls = context.state.calls
    calls.call(context.workspace_id, request.function_call_id)
    # Cursor "<seq>-0" (the client starts at "0-0"). A request with start/end idx
    # (FunctionCall.get) reads from the beginning, filtered to those indices.
    cursor = int(request.last_entry_id.split("-")[0] or 0) if request.last_entry_id else 0
    by_index = request.HasField("start_idx") or request.HasField("end_idx")
    limit = min(request.max_values or MAX_OUTPUTS_PER_RESPONSE, MAX_OUTPUTS_PER_RESPONSE)
    found = await poll(
        context.state.notifier,
        [outputs_key(request.function_call_id)],
        lambda: calls.outputs_after(
            request.function_call_id,
            0 if by_index else cursor,
            limit,
            (request.start_idx, request.end_idx) if by_index else None,
        ),
        min(request.timeout, MAX_POLL_S),
    )
    cleared = (
        [o.seq for o in found if o.result.status == api_pb2.GenericResult.GENERIC_STATUS_SUCCESS]
        if request.clear_on_success
        else []
    )
    unfinished = calls.delivered(request.function_call_id, cleared)
    last_seq = max([o.seq for o in found], default=cursor)
    return api_pb2.FunctionGetOutputsResponse(
        outputs=[
            api_pb2.FunctionGetOutputsItem(
                idx=o.idx,
                input_id=o.input_id,
                result=o.result,
                data_format=o.data_format,  # type: ignore[arg-type]
                # Client 1.6.4 drops map outputs whose retry_count differs from its own
                # count, which stays 0 when retries happen on the server.
                retry_count=0,
            )
            for o in found
        ],
        last_entry_id=f"{last_seq}-0",
        num_unfinished_inputs=unfinished,
    )


@handler("FunctionCallFromId")
async def function_call_from_id(
    context: RequestContext, request: api_pb2.FunctionCallFromIdRequest
) -> api_pb2.FunctionCallFromIdResponse:
    call = context.state.calls.call(context.workspace_id, request.function_call_id)
    return api_pb2.FunctionCallFromIdResponse(
        function_call_id=call.id,
        num_inputs=context.state.calls.input_count(call.id),
        metadata=api_pb2.FunctionCallHandleMetadata(app_id=call.app_id, function_id=call.function_id),
    )


@handler("FunctionCallCancel")
async def function_call_cancel(
    context: RequestContext, request: api_pb2.FunctionCallCancelRequest
) -> empty_pb2.Empty:
    context.state.calls.call(context.workspace_id, request.function_call_id)
    await context.state.scheduler.cancel_call(request.function_call_id, request.terminate_containers)
    return empty_pb2.Empty()


@handler("FunctionCallGetDataOut")
async def function_call_get_data_out(
    context: RequestContext,
    request: api_pb2.FunctionCallGetDataRequest,
    send: Callable[[api_pb2.DataChunk], Awaitable[None]],
) -> None:
    await _stream_data(context, request, "out", send)


@handler("FunctionCallGetDataIn")
async def function_call_get_data_in(
    context: RequestContext,
    request: api_pb2.FunctionCallGetDataRequest,
    send: Callable[[api_pb2.DataChunk], Awaitable[None]],
) -> None:
    await _stream_data(context, request, "in", send)


async def _stream_data(
    context: RequestContext,
    request: api_pb2.FunctionCallGetDataRequest,
    direction: str,
    send: Callable[[api_pb2.DataChunk], Awaitable[None]],
) -> None:
    """Stream a call's data chunks after `last_index`, until the call is finished or the poll ends."""
    calls = context.state.calls
    call = calls.call(context.workspace_id, request.function_call_id)
    last_index = request.last_index
    deadline = time.monotonic() + MAX_POLL_S
    while time.monotonic() < deadline:
        with context.state.notifier.listen(data_key(call.id, direction), outputs_key(call.id)) as listener:
            chunks = calls.data_after(call.id, direction, last_index)
            for chunk in chunks:
                await send(chunk)
                last_index = chunk.index
            if not chunks and calls.unfinished_count(call.id) == 0:
                return
            if not chunks:
                await listener.wait(min(deadline - time.monotonic(), 5.0))
        await asyncio.sleep(0)


@handler("FunctionCallPutDataOut")
async def function_call_put_data_out(
    context: RequestContext, request: api_pb2.FunctionCallPutDataRequest
) -> empty_pb2.Empty:
    task = context.require_task()
    call = context.state.calls.call(context.workspace_id, request.function_call_id)
    if call.function_id != task.function_id:
        raise errors.permission_denied(f"container {task.task_id} does not serve function call {call.id}")
    context.state.calls.put_data(call.id, "out", list(request.data_chunks))
    return empty_pb2.Empty()

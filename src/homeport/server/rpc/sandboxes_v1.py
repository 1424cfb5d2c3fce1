"""The V1 sandbox RPCs that have no V2 twin. Client 1.6.4 makes a sandbox through the V1
API when it asks for `gpu=` or `pty=True` (modal/sandbox/_impl_v1.py): SandboxCreate, then
it polls SandboxGetTaskId; the entrypoint's stdio goes over the main service (SandboxGetLogs,
SandboxStdinWrite) instead of the command router; execs still go to the router.

Contracts: SandboxGetLogs streams `TaskLogsBatch`es of text for one file descriptor,
resumed after `last_entry_id` (here: the byte offset read up to), ending with `eof` once the
entrypoint's stream is closed, or just ending at `timeout` (the client asks again);
SandboxStdinWrite numbers its writes from 1 (`index`), so a retried write is recognised.
"""

from __future__ import annotations

import asyncio
import codecs
import uuid
from collections.abc import Awaitable, Callable

from grpclib import GRPCError, Status
from modal_proto import api_pb2

from homeport.agent.sandbox_processes import MAIN, SandboxProcesses
from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.rpc.images import image_metadata
from homeport.server.rpc.sandboxes import owned_sandbox, sandbox_service

LOGS_TIMEOUT_S = 55.0


@handler("SandboxCreate")
async def sandbox_create(
    context: RequestContext, request: api_pb2.SandboxCreateRequest
) -> api_pb2.SandboxCreateResponse:
    app = context.state.apps.get(context.workspace_id, request.app_id)
    # V1 names every secret by id, the `env=` dict included (as an ephemeral secret).
    sources = [api_pb2.SecretSource(secret_id=secret_id) for secret_id in request.definition.secret_ids]
    sandbox_id, _ = await sandbox_service(context).create(
        context.workspace_id,
        app.id,
        app.environment_name,
        request.definition,
        sources,
        list(request.tags),
        context.idempotency_key,
        v1=True,
    )
    return api_pb2.SandboxCreateResponse(
        sandbox_id=sandbox_id, metadata=api_pb2.SandboxHandleMetadata(app_id=app.id)
    )


def _processes(context: RequestContext, sandbox_id: str) -> SandboxProcesses | None:
    """The sandbox's processes on this machine's node (sandboxes run on one machine)."""
    return context.state.agent.sandbox(owned_sandbox(context, sandbox_id).task_id)


@handler("SandboxGetLogs")
async def sandbox_get_logs(
    context: RequestContext,
    request: api_pb2.SandboxGetLogsRequest,
    send: Callable[[api_pb2.TaskLogsBatch], Awaitable[None]],
) -> None:
    fd = 2 if request.file_descriptor == api_pb2.FILE_DESCRIPTOR_STDERR else 1
    offset = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
    processes = _processes(context, request.sandbox_id)
    if processes is None:  # long gone: nothing more to read
        await send(api_pb2.TaskLogsBatch(entry_id=str(offset), eof=True))
        return
    stream = processes.processes[MAIN].stream(fd)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        async with asyncio.timeout(min(request.timeout or LOGS_TIMEOUT_S, LOGS_TIMEOUT_S)):
            async for start, data in stream.read(offset):
                text = decoder.decode(data)
                # A character cut at the chunk's end is sent with the next chunk.
                offset = start + len(data) - len(decoder.getstate()[0])
                if text:
                    item = api_pb2.TaskLogs(data=text, file_descriptor=request.file_descriptor)
                    await send(api_pb2.TaskLogsBatch(entry_id=str(offset), items=[item]))
    except TimeoutError:
        return
    await send(api_pb2.TaskLogsBatch(entry_id=str(offset), eof=True))


@handler("SandboxStdinWrite")
async def sandbox_stdin_write(
    context: RequestContext, request: api_pb2.SandboxStdinWriteRequest
) -> api_pb2.SandboxStdinWriteResponse:
    processes = _processes(context, request.sandbox_id)
    main = processes.processes[MAIN] if processes is not None else None
    if processes is None or main is None or main.exit_status is not None:
        raise errors.failed_precondition("the sandbox has finished; its stdin is closed")
    if request.index <= processes.v1_stdin_index:
        return api_pb2.SandboxStdinWriteResponse()  # a retried write, already delivered
    try:
        processes.write_stdin(MAIN, main.stdin_offset, request.input, request.eof)
    except ConnectionError as error:
        raise GRPCError(Status.FAILED_PRECONDITION, str(error)) from None
    processes.v1_stdin_index = request.index
    return api_pb2.SandboxStdinWriteResponse()


@handler("SandboxSnapshotFs")
async def sandbox_snapshot_fs(
    context: RequestContext, request: api_pb2.SandboxSnapshotFsRequest
) -> api_pb2.SandboxSnapshotFsResponse:
    row = owned_sandbox(context, request.sandbox_id)
    # Client 1.6.4 sends one idempotency key for all attempts of one call: a retry finds
    # the image its first attempt made; without one, every call is a snapshot of its own.
    image_id = await sandbox_service(context).snapshot_filesystem(
        row.task_id, context.idempotency_key or uuid.uuid4().hex
    )
    _, _, config = context.state.images.status(context.workspace_id, image_id)
    return api_pb2.SandboxSnapshotFsResponse(
        image_id=image_id,
        result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
        image_metadata=image_metadata(config),
    )

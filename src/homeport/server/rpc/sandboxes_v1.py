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

import codecs
import time
import uuid
from collections.abc import Awaitable, Callable

from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.rpc.images import image_metadata
from homeport.server.rpc.sandboxes import caller_node, owned_sandbox, sandbox_service

LOGS_TIMEOUT_S = 55.0
READ_SLICE_S = 10.0  # one wait for output on the sandbox's node (it may be another machine)


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
        near_node=caller_node(context),
    )
    return api_pb2.SandboxCreateResponse(
        sandbox_id=sandbox_id, metadata=api_pb2.SandboxHandleMetadata(app_id=app.id)
    )


def _on_node(context: RequestContext, sandbox_id: str):  # type: ignore[no-untyped-def]
    """The workspace's sandbox (its row) and the node it ran on, also once it finished: the
    node keeps an ended sandbox's output readable (the client reads it after wait())."""
    row = owned_sandbox(context, sandbox_id)
    return row, sandbox_service(context).node_it_ran_on(row)


@handler("SandboxGetLogs")
async def sandbox_get_logs(
    context: RequestContext,
    request: api_pb2.SandboxGetLogsRequest,
    send: Callable[[api_pb2.TaskLogsBatch], Awaitable[None]],
) -> None:
    fd = 2 if request.file_descriptor == api_pb2.FILE_DESCRIPTOR_STDERR else 1
    offset = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
    row, node = _on_node(context, request.sandbox_id)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    deadline = time.monotonic() + min(request.timeout or LOGS_TIMEOUT_S, LOGS_TIMEOUT_S)
    ended = node is None  # long gone: nothing more to read
    while not ended:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return  # the client asks again
        read = await node.sandbox_output(row.task_id, fd, offset, min(remaining, READ_SLICE_S))
        if read is None:
            break
        chunks, ended = read
        for start, data in chunks:
            text = decoder.decode(data)
            # A character cut at the chunk's end is sent with the next chunk.
            offset = start + len(data) - len(decoder.getstate()[0])
            if text:
                item = api_pb2.TaskLogs(data=text, file_descriptor=request.file_descriptor)
                await send(api_pb2.TaskLogsBatch(entry_id=str(offset), items=[item]))
    await send(api_pb2.TaskLogsBatch(entry_id=str(offset), eof=True))


@handler("SandboxStdinWrite")
async def sandbox_stdin_write(
    context: RequestContext, request: api_pb2.SandboxStdinWriteRequest
) -> api_pb2.SandboxStdinWriteResponse:
    row, node = _on_node(context, request.sandbox_id)
    refusal = (
        "the sandbox has finished; its stdin is closed"
        if node is None
        else await node.sandbox_stdin(row.task_id, request.index, request.input, request.eof)
    )
    if refusal is not None:
        raise errors.failed_precondition(refusal)
    return api_pb2.SandboxStdinWriteResponse()


@handler("SandboxSnapshotFs")
async def sandbox_snapshot_fs(
    context: RequestContext, request: api_pb2.SandboxSnapshotFsRequest
) -> api_pb2.SandboxSnapshotFsResponse:
    row = owned_sandbox(context, request.sandbox_id)
    # Client 1.6.4 sends one idempotency key for all attempts of one call: a retry finds
    # the image its first attempt made; without one, every call is a snapshot of its own.
    try:
        image_id = await sandbox_service(context).snapshot_filesystem(
            row.task_id, context.idempotency_key or uuid.uuid4().hex
        )
    except (LookupError, RuntimeError) as error:  # it ended meanwhile; copying failed
        raise errors.failed_precondition(f"the filesystem snapshot failed: {error}") from None
    _, _, config = context.state.images.status(context.workspace_id, image_id)
    return api_pb2.SandboxSnapshotFsResponse(
        image_id=image_id,
        result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
        image_metadata=image_metadata(config),
    )

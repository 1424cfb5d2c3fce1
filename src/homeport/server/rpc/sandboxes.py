"""Sandbox RPCs of the V2 API (client 1.6.4's default) on the main service, and the V1
RPCs that take the same messages (rpc/sandboxes_v1.py has the V1-only ones). Stdio and exec
go to the task command router instead (agent/router.py); these hand out its address and
credential.

Client contracts (modal/sandbox/_impl_v2.py, _common.py, _sandbox.py): every V2 call
carries `x-modal-auth-token` from AuthTokenGet, a JWT whose `exp` the client reads (the
user's token still authenticates the call); SandboxWaitV2 answers within its `timeout`
with no result while running; SandboxListV2 pages by `created_at` until an empty page.
"""

from __future__ import annotations

import json
import time

import jwt
from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.sandboxes import Sandboxes

AUTH_TOKEN_LIFETIME_S = 3600


def sandbox_service(context: RequestContext) -> Sandboxes:
    return context.state.sandboxes


def owned_sandbox(context: RequestContext, sandbox_id: str):  # type: ignore[no-untyped-def]
    return sandbox_service(context).row(sandbox_id, context.workspace_id)


def _running_by_task(context: RequestContext, task_id: str):  # type: ignore[no-untyped-def]
    """The running sandbox of the workspace whose task this is (`modal container exec`)."""
    row = sandbox_service(context).by_task(task_id)
    if row is None or row.workspace_id != context.workspace_id or row.result is not None:
        raise errors.not_found(f"no running sandbox has task {task_id}")
    return row


def _tags(row) -> list[api_pb2.SandboxTag]:  # type: ignore[no-untyped-def]
    return [
        api_pb2.SandboxTag(tag_name=name, tag_value=value)
        for name, value in sorted(json.loads(row.tags).items())
    ]


def caller_node(context: RequestContext) -> str | None:
    """The node of the container making this request (None: not a container)."""
    if context.task is None:
        return None
    running = context.state.scheduler.container(context.task.task_id)
    return running.node.node_id if running is not None and running.node is not None else None


def _access(context: RequestContext, row) -> api_pb2.TaskGetCommandRouterAccessResponse:  # type: ignore[no-untyped-def]
    """The router beside the sandbox, on its node, and a credential for its task only."""
    return api_pb2.TaskGetCommandRouterAccessResponse(
        url=sandbox_service(context).router_url(row, caller_node(context)),
        jwt=context.state.router_credentials.issue(row.task_id),
    )


@handler("AuthTokenGet")
async def auth_token_get(
    context: RequestContext, request: api_pb2.AuthTokenGetRequest
) -> api_pb2.AuthTokenGetResponse:
    claims = {"workspace_id": context.workspace_id, "exp": int(time.time()) + AUTH_TOKEN_LIFETIME_S}
    return api_pb2.AuthTokenGetResponse(
        token=jwt.encode(claims, context.state.router_credentials.key, "HS256")
    )


@handler("SandboxCreateV2")
async def sandbox_create_v2(
    context: RequestContext, request: api_pb2.SandboxCreateV2Request
) -> api_pb2.SandboxCreateV2Response:
    app = context.state.apps.get(context.workspace_id, request.app_id)
    sandbox_id, task_id = await sandbox_service(context).create(
        context.workspace_id,
        app.id,
        app.environment_name,
        request.definition,
        list(request.secret_sources),
        list(request.tags),
        context.idempotency_key,
        near_node=caller_node(context),
    )
    access = api_pb2.CommandRouterAccess(
        url=sandbox_service(context).started_router_url(sandbox_id, caller_node(context)),
        jwt=context.state.router_credentials.issue(task_id),
    )
    return api_pb2.SandboxCreateV2Response(
        sandbox_id=sandbox_id,
        task_id=task_id,
        # All of them, so the client need not ask SandboxGetTunnelsV2 (it does when fewer).
        tunnels=await sandbox_service(context).tunnels(sandbox_id),
        command_router_access=access,
        metadata=api_pb2.SandboxHandleMetadata(app_id=app.id),
    )


@handler("SandboxGetTunnels")
@handler("SandboxGetTunnelsV2")
async def sandbox_get_tunnels(
    context: RequestContext, request: api_pb2.SandboxGetTunnelsRequest
) -> api_pb2.SandboxGetTunnelsResponse:
    """Tunnels open with the sandbox (they are listening once it has started)."""
    if owned_sandbox(context, request.sandbox_id).result is not None:
        raise errors.failed_precondition(f"sandbox {request.sandbox_id} has finished; its tunnels are closed")
    return api_pb2.SandboxGetTunnelsResponse(
        result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
        tunnels=await sandbox_service(context).tunnels(request.sandbox_id),
    )


@handler("SandboxWait")
@handler("SandboxWaitV2")
async def sandbox_wait_v2(
    context: RequestContext, request: api_pb2.SandboxWaitRequest
) -> api_pb2.SandboxWaitResponse:
    row, result = await sandbox_service(context).wait(
        context.workspace_id, request.sandbox_id, request.timeout
    )
    response = api_pb2.SandboxWaitResponse(metadata=api_pb2.SandboxHandleMetadata(app_id=row.app_id))
    if result is not None:
        response.result.CopyFrom(result)
    return response


@handler("SandboxTerminate")
@handler("SandboxTerminateV2")
async def sandbox_terminate_v2(
    context: RequestContext, request: api_pb2.SandboxTerminateRequest
) -> api_pb2.SandboxTerminateResponse:
    owned_sandbox(context, request.sandbox_id)
    sandbox_service(context).terminate(request.sandbox_id)
    return api_pb2.SandboxTerminateResponse()


@handler("SandboxGetTaskId")
@handler("SandboxGetTaskIdV2")
async def sandbox_get_task_id_v2(
    context: RequestContext, request: api_pb2.SandboxGetTaskIdRequest
) -> api_pb2.SandboxGetTaskIdResponse:
    row = owned_sandbox(context, request.sandbox_id)
    response = api_pb2.SandboxGetTaskIdResponse(task_id=row.task_id)
    if row.result is not None:
        response.task_result.CopyFrom(api_pb2.GenericResult.FromString(row.result))
    return response


@handler("SandboxGetCommandRouterAccess")
async def sandbox_get_command_router_access(
    context: RequestContext, request: api_pb2.SandboxGetCommandRouterAccessRequest
) -> api_pb2.SandboxGetCommandRouterAccessResponse:
    # A sandbox handle names its sandbox; `modal container exec` names the task.
    if request.WhichOneof("target") == "task_id":
        row = _running_by_task(context, request.task_id)
    else:
        row = owned_sandbox(context, request.sandbox_id)
        if row.result is not None:
            raise errors.failed_precondition(f"sandbox {row.id} has finished")
    access = _access(context, row)
    return api_pb2.SandboxGetCommandRouterAccessResponse(url=access.url, jwt=access.jwt)


@handler("TaskGetCommandRouterAccess")
async def task_get_command_router_access(
    context: RequestContext, request: api_pb2.TaskGetCommandRouterAccessRequest
) -> api_pb2.TaskGetCommandRouterAccessResponse:
    """What `modal container exec TASK_ID` asks for a V1 sandbox's task, and the V1
    sandbox handle for its execs."""
    return _access(context, _running_by_task(context, request.task_id))


@handler("SandboxTagsGet")
@handler("SandboxTagsGetV2")
async def sandbox_tags_get_v2(
    context: RequestContext, request: api_pb2.SandboxTagsGetRequest
) -> api_pb2.SandboxTagsGetResponse:
    return api_pb2.SandboxTagsGetResponse(tags=_tags(owned_sandbox(context, request.sandbox_id)))


@handler("SandboxTagsSet")
@handler("SandboxTagsSetV2")
async def sandbox_tags_set_v2(
    context: RequestContext, request: api_pb2.SandboxTagsSetRequest
) -> empty_pb2.Empty:
    owned_sandbox(context, request.sandbox_id)
    sandbox_service(context).set_tags(
        request.sandbox_id, {tag.tag_name: tag.tag_value for tag in request.tags}
    )
    return empty_pb2.Empty()


@handler("SandboxList")
@handler("SandboxListV2")
async def sandbox_list_v2(
    context: RequestContext, request: api_pb2.SandboxListRequest
) -> api_pb2.SandboxListResponse:
    rows = sandbox_service(context).list(
        context.workspace_id,
        [request.app_id] if request.app_id else None,
        context.environment(request.environment_name) if not request.app_id else "",
        request.before_timestamp,
        {tag.tag_name: tag.tag_value for tag in request.tags},
    )
    return api_pb2.SandboxListResponse(
        sandboxes=[
            api_pb2.SandboxInfo(
                id=row.id,
                created_at=row.created_at,
                app_id=row.app_id,
                name=row.name or "",
                metadata=api_pb2.SandboxHandleMetadata(app_id=row.app_id),
                tags=_tags(row),
            )
            for row in rows
        ]
    )


@handler("SandboxGetFromName")
@handler("SandboxGetFromNameV2")
async def sandbox_get_from_name_v2(
    context: RequestContext, request: api_pb2.SandboxGetFromNameRequest
) -> api_pb2.SandboxGetFromNameResponse:
    environment = context.environment(request.environment_name)
    app_id = context.state.apps.deployed_app_id(context.workspace_id, environment, request.app_name)
    row = sandbox_service(context).by_name(app_id, request.sandbox_name) if app_id else None
    if row is None:
        raise errors.not_found(
            f"no running sandbox named {request.sandbox_name!r} in app {request.app_name!r} "
            f"(environment {environment!r})"
        )
    return api_pb2.SandboxGetFromNameResponse(
        sandbox_id=row.id, metadata=api_pb2.SandboxHandleMetadata(app_id=row.app_id)
    )

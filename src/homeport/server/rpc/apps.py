"""App lifecycle RPCs: create, publish (run or deploy), heartbeat, stop, list, lookup."""

from __future__ import annotations

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.services import functions as catalog


@handler("AppCreate")
async def app_create(context: RequestContext, request: api_pb2.AppCreateRequest) -> api_pb2.AppCreateResponse:
    environment = context.environment(request.environment_name)
    context.state.environments.get_or_create(context.workspace_id, environment)
    app_id = context.state.apps.create(
        context.workspace_id,
        environment,
        request.description,
        request.app_state,
        request.client_id,
        dict(request.tags),
    )
    return api_pb2.AppCreateResponse(app_id=app_id, app_page_url=context.state.app_page_url(app_id))


@handler("AppGetOrCreate")
async def app_get_or_create(
    context: RequestContext, request: api_pb2.AppGetOrCreateRequest
) -> api_pb2.AppGetOrCreateResponse:
    environment = context.environment(request.environment_name)
    app_id = context.state.apps.deployed_app_id(context.workspace_id, environment, request.app_name)
    if app_id is None:
        app_id = context.state.apps.create(
            context.workspace_id, environment, request.app_name, api_pb2.APP_STATE_INITIALIZING, ""
        )
        context.state.apps.publish(
            context.workspace_id, app_id, request.app_name, api_pb2.APP_STATE_DEPLOYED, {}, {}
        )
    return api_pb2.AppGetOrCreateResponse(app_id=app_id)


@handler("AppGetByDeploymentName")
async def app_get_by_deployment_name(
    context: RequestContext, request: api_pb2.AppGetByDeploymentNameRequest
) -> api_pb2.AppGetByDeploymentNameResponse:
    environment = context.environment(request.environment_name)
    app_id = context.state.apps.deployed_app_id(context.workspace_id, environment, request.name)
    return api_pb2.AppGetByDeploymentNameResponse(app_id=app_id or "", environment_name=environment)


@handler("AppLookup")
async def app_lookup(context: RequestContext, request: api_pb2.AppLookupRequest) -> api_pb2.AppLookupResponse:
    environment = context.environment(request.environment_name)
    app_id = context.state.apps.require_deployed(context.workspace_id, environment, request.app_name)
    return api_pb2.AppLookupResponse(app_id=app_id)


@handler("AppPublish")
async def app_publish(
    context: RequestContext, request: api_pb2.AppPublishRequest
) -> api_pb2.AppPublishResponse:
    deployed_at = context.state.apps.publish(
        context.workspace_id,
        request.app_id,
        request.name,
        request.app_state,
        dict(request.function_ids),
        dict(request.class_ids),
        deployed_by=context.token_id or "",
    )
    # A redeploy keeps the app's function ids: containers running the old code finish
    # their inputs and stop; new inputs go to containers with the new definition.
    context.state.scheduler.retire(set(request.function_ids.values()), reason="a new version was deployed")
    if request.app_state == api_pb2.APP_STATE_DEPLOYED:
        context.state.scheduler.wake()
    context.state.scheduler.scaler.prewarm(list(request.function_ids.values()))
    return api_pb2.AppPublishResponse(url=context.state.app_page_url(request.app_id), deployed_at=deployed_at)


@handler("AppDeploymentHistory")
async def app_deployment_history(
    context: RequestContext, request: api_pb2.AppDeploymentHistoryRequest
) -> api_pb2.AppDeploymentHistoryResponse:
    """Newest first: client 1.6.4 shows the first entry as the version now deployed."""
    context.state.apps.get(context.workspace_id, request.app_id)
    rows = context.state.apps.deployment_history(request.app_id)
    return api_pb2.AppDeploymentHistoryResponse(
        app_deployment_histories=[
            api_pb2.AppDeploymentHistory(
                app_id=row.app_id,
                version=row.version,
                deployed_at=row.deployed_at,
                client_version=row.client_version,
                deployed_by=row.deployed_by,
            )
            for row in rows
        ],
        production_app_version=rows[0].version if rows else 0,
    )


@handler("AppSetTags")
async def app_set_tags(context: RequestContext, request: api_pb2.AppSetTagsRequest) -> empty_pb2.Empty:
    context.state.apps.get(context.workspace_id, request.app_id)
    context.state.apps.set_tags(request.app_id, dict(request.tags))
    return empty_pb2.Empty()


@handler("AppGetTags")
async def app_get_tags(
    context: RequestContext, request: api_pb2.AppGetTagsRequest
) -> api_pb2.AppGetTagsResponse:
    context.state.apps.get(context.workspace_id, request.app_id)
    return api_pb2.AppGetTagsResponse(tags=context.state.apps.tags(request.app_id))


@handler("AppHeartbeat")
async def app_heartbeat(context: RequestContext, request: api_pb2.AppHeartbeatRequest) -> empty_pb2.Empty:
    context.state.apps.heartbeat(context.workspace_id, request.app_id)
    return empty_pb2.Empty()


@handler("AppClientDisconnect")
async def app_client_disconnect(
    context: RequestContext, request: api_pb2.AppClientDisconnectRequest
) -> empty_pb2.Empty:
    app = context.state.apps.get(context.workspace_id, request.app_id)
    # Detached and deployed apps outlive their client; an ephemeral app ends with it
    # (Ctrl-C included), and with it its outstanding inputs and containers.
    if app.state in (api_pb2.APP_STATE_EPHEMERAL, api_pb2.APP_STATE_INITIALIZING):
        await context.state.scheduler.stop_app(request.app_id, reason="the app's client disconnected")
    return empty_pb2.Empty()


@handler("AppStop")
async def app_stop(context: RequestContext, request: api_pb2.AppStopRequest) -> empty_pb2.Empty:
    context.state.apps.get(context.workspace_id, request.app_id)
    await context.state.scheduler.stop_app(request.app_id, reason="the app was stopped")
    return empty_pb2.Empty()


@handler("AppList")
async def app_list(context: RequestContext, request: api_pb2.AppListRequest) -> api_pb2.AppListResponse:
    environment = context.environment(request.environment_name)
    running = context.state.scheduler.running_task_counts()
    items = [
        api_pb2.AppListResponse.AppListItem(
            app_id=app.id,
            description=app.name or app.description,
            name=app.name or "",
            state=app.state,  # type: ignore[arg-type]
            created_at=app.created_at,
            stopped_at=app.stopped_at or 0.0,
            n_running_tasks=running.get(app.id, 0),
        )
        for app in context.state.apps.list(context.workspace_id, environment)
    ]
    return api_pb2.AppListResponse(apps=items)


@handler("AppGetLayout")
async def app_get_layout(
    context: RequestContext, request: api_pb2.AppGetLayoutRequest
) -> api_pb2.AppGetLayoutResponse:
    context.state.apps.get(context.workspace_id, request.app_id)
    return api_pb2.AppGetLayoutResponse(app_layout=catalog.app_layout(context.state.apps, request.app_id))


@handler("AppGetLifecycle")
async def app_get_lifecycle(
    context: RequestContext, request: api_pb2.AppGetLifecycleRequest
) -> api_pb2.AppGetLifecycleResponse:
    app = context.state.apps.get(context.workspace_id, request.app_id)
    return api_pb2.AppGetLifecycleResponse(
        lifecycle=api_pb2.AppLifecycle(
            app_state=app.state,  # type: ignore[arg-type]
            created_at=app.created_at,
            stopped_at=app.stopped_at or 0.0,
        )
    )

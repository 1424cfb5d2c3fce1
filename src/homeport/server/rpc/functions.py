"""Function and class definition RPCs: precreate, create, lookup, parameter binding."""

from __future__ import annotations

from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.scheduler import DEFAULT_IDLE_S as DEFAULT_SCALEDOWN_S
from homeport.server.services import autoscaling
from homeport.server.services import functions as catalog
from homeport.server.services.apps import AppRow
from homeport.server.services.web import Endpoint, host_label


def _assign_web_urls(
    context: RequestContext,
    app: AppRow,
    function_id: str,
    tag: str,
    webhook_config: api_pb2.WebhookConfig,
    method_definitions: dict[str, api_pb2.MethodDefinition],
    metadata: api_pb2.FunctionHandleMetadata,
    definition: api_pb2.Function | None,
) -> None:
    """Give web functions (and web methods of classes) their URLs; with a definition,
    also route their hostnames here. Ephemeral apps (`modal run`/`modal serve`) get a
    "-dev" suffix, so they never take over a deployed app's URL."""
    workspace_name = context.state.auth.workspace_name(app.workspace_id)
    app_name = app.name or app.description
    ephemeral = app.state in (api_pb2.APP_STATE_EPHEMERAL, api_pb2.APP_STATE_DETACHED)
    targets: list[tuple[str, str, api_pb2.WebhookConfig]] = []
    if webhook_config.type:
        targets.append(("", tag, webhook_config))
    for method_name, method in method_definitions.items():
        if method.webhook_config.type:
            targets.append((method_name, f"{tag.removesuffix('.*')}-{method_name}", method.webhook_config))
    for method_name, name, config in targets:
        suffix = config.ephemeral_suffix or ("dev" if ephemeral else "")
        label = host_label(workspace_name, app_name, name, config.requested_suffix, suffix)
        url = context.state.settings.web_url(label)
        if method_name:
            metadata.method_handle_metadata[method_name].web_url = url
            if definition is not None:
                definition.method_definitions[method_name].web_url = url
        else:
            metadata.web_url = url
            if definition is not None:
                definition.web_url = url
        if definition is not None:
            context.state.web.register(
                Endpoint(
                    label, app.workspace_id, app.id, function_id, method_name, config.requires_proxy_auth
                )
            )


@handler("FunctionPrecreate")
async def function_precreate(
    context: RequestContext, request: api_pb2.FunctionPrecreateRequest
) -> api_pb2.FunctionPrecreateResponse:
    app = context.state.apps.get(context.workspace_id, request.app_id)
    function_id = context.state.apps.precreate_function(
        request.app_id, request.function_name, request.existing_function_id
    )
    metadata = catalog.handle_metadata(
        request.app_id,
        request.function_name,
        request.function_type,
        dict(request.method_definitions),
        None,
    )
    _assign_web_urls(
        context,
        app,
        function_id,
        request.function_name,
        request.webhook_config,
        dict(request.method_definitions),
        metadata,
        None,
    )
    return api_pb2.FunctionPrecreateResponse(function_id=function_id, handle_metadata=metadata)


@handler("FunctionCreate")
async def function_create(
    context: RequestContext, request: api_pb2.FunctionCreateRequest
) -> api_pb2.FunctionCreateResponse:
    app = context.state.apps.get(context.workspace_id, request.app_id)
    if request.HasField("function_data") and request.function_data.ranked_functions:
        # gpu=[...] fallbacks: client 1.6.4 sends one definition per GPU choice, by rank.
        ranked = sorted(request.function_data.ranked_functions, key=lambda r: r.rank)
        definition = api_pb2.Function()
        definition.CopyFrom(ranked[0].function)
        gpu_options = [
            g for g in (catalog.gpu_request(r.function.resources) for r in ranked) if g is not None
        ]
    else:
        definition = request.function
        gpu_options = [g for g in [catalog.gpu_request(definition.resources)] if g is not None]
    if not definition.function_name:
        raise errors.invalid_argument("FunctionCreate needs a function definition with a name")
    function_id = request.existing_function_id or context.state.apps.precreate_function(
        app.id, definition.function_name, ""
    )
    _assign_web_urls(
        context,
        app,
        function_id,
        definition.function_name,
        definition.webhook_config,
        dict(definition.method_definitions),
        api_pb2.FunctionHandleMetadata(),
        definition,
    )
    metadata = catalog.metadata_for_definition(app.id, definition)
    schedule = request.schedule if request.HasField("schedule") else definition.schedule
    if schedule.WhichOneof("schedule_oneof"):
        definition.schedule.CopyFrom(schedule)
    next_run = (
        catalog.next_schedule_time(schedule, catalog.now()) if schedule.WhichOneof("schedule_oneof") else None
    )
    context.state.apps.save_function(
        function_id, app.id, definition.function_name, definition, metadata, next_run, gpu_options
    )
    return api_pb2.FunctionCreateResponse(
        function_id=function_id,
        function=definition,
        handle_metadata=metadata,
        function_data=catalog.function_data(definition),
    )


@handler("ClassCreate")
async def class_create(
    context: RequestContext, request: api_pb2.ClassCreateRequest
) -> api_pb2.ClassCreateResponse:
    context.state.apps.get(context.workspace_id, request.app_id)
    metadata = api_pb2.ClassHandleMetadata(methods=request.methods)
    class_id = context.state.apps.create_class(
        request.app_id, request.existing_class_id, "", "", metadata.SerializeToString()
    )
    return api_pb2.ClassCreateResponse(class_id=class_id, handle_metadata=metadata)


def _deployed_function(context: RequestContext, app_name: str, environment_name: str, tag: str):  # type: ignore[no-untyped-def]
    environment = context.environment(environment_name)
    app_id = context.state.apps.require_deployed(context.workspace_id, environment, app_name)
    function = context.state.apps.function_by_tag(app_id, tag)
    if function is None or function.definition is None:
        raise errors.not_found(
            f"function '{tag}' not found in app '{app_name}' (environment '{environment}')"
        )
    return function


@handler("FunctionGet")
async def function_get(
    context: RequestContext, request: api_pb2.FunctionGetRequest
) -> api_pb2.FunctionGetResponse:
    function = _deployed_function(context, request.app_name, request.environment_name, request.object_tag)
    return api_pb2.FunctionGetResponse(
        function_id=function.id,
        handle_metadata=function.handle_metadata,
        function=catalog.function_data(function.definition),
    )


@handler("FunctionGetById")
async def function_get_by_id(
    context: RequestContext, request: api_pb2.FunctionGetByIdRequest
) -> api_pb2.FunctionGetByIdResponse:
    function = context.state.apps.function(request.function_id)
    context.state.apps.get(context.workspace_id, function.app_id)
    definition, _ = catalog.effective_definition(context.state.apps, function)
    return api_pb2.FunctionGetByIdResponse(
        function=catalog.function_data(definition), handle_metadata=function.handle_metadata
    )


@handler("ClassGet")
async def class_get(context: RequestContext, request: api_pb2.ClassGetRequest) -> api_pb2.ClassGetResponse:
    environment = context.environment(request.environment_name)
    app_id = context.state.apps.require_deployed(context.workspace_id, environment, request.app_name)
    found = context.state.apps.class_by_tag(app_id, request.object_tag)
    if found is None:
        raise errors.not_found(
            f"class '{request.object_tag}' not found in app '{request.app_name}' (environment '{environment}')"
        )
    class_id, raw_metadata = found
    metadata = api_pb2.ClassHandleMetadata()
    metadata.ParseFromString(raw_metadata)
    service = context.state.apps.function_by_tag(app_id, f"{request.object_tag}.*")
    if service is not None:
        metadata.class_function_id = service.id
        metadata.class_function_metadata.CopyFrom(service.handle_metadata)
    return api_pb2.ClassGetResponse(class_id=class_id, handle_metadata=metadata)


@handler("FunctionUpdateSchedulingParams")
async def function_update_scheduling_params(
    context: RequestContext, request: api_pb2.FunctionUpdateSchedulingParamsRequest
) -> api_pb2.FunctionUpdateSchedulingParamsResponse:
    """`Function.update_autoscaler(...)`: takes effect at once and lasts until the next deploy
    (which saves a fresh definition)."""
    apps = context.state.apps
    function = apps.function(request.function_id)
    apps.get(context.workspace_id, function.app_id)
    target = (
        apps.function(function.parent_id) if function.parent_id else function
    )  # class instances: their class
    definition = api_pb2.Function()
    definition.CopyFrom(target.definition or api_pb2.Function())
    autoscaling.merge_autoscaler_settings(definition, request.settings)
    if request.warm_pool_size_override:
        definition.autoscaler_settings.min_containers = request.warm_pool_size_override
    apps.update_definition(target.id, definition)
    context.state.scheduler.wake()
    current = autoscaling.autoscaling(definition, DEFAULT_SCALEDOWN_S)
    return api_pb2.FunctionUpdateSchedulingParamsResponse(
        current_settings=api_pb2.AutoscalerSettings(
            min_containers=current.min_containers,
            max_containers=current.max_containers,
            buffer_containers=current.buffer_containers,
            scaledown_window=int(current.scaledown_window_s),
        )
    )


@handler("FunctionBindParams")
async def function_bind_params(
    context: RequestContext, request: api_pb2.FunctionBindParamsRequest
) -> api_pb2.FunctionBindParamsResponse:
    parent = context.state.apps.function(request.function_id)
    context.state.apps.get(context.workspace_id, parent.app_id)
    if parent.parent_id is not None:
        raise errors.invalid_argument(
            f"function {parent.id} is already bound; bind its base function instead"
        )
    options = request.function_options if request.HasField("function_options") else None
    bound_id = context.state.apps.bind_function(parent, request.serialized_params, options)
    return api_pb2.FunctionBindParamsResponse(
        bound_function_id=bound_id, handle_metadata=parent.handle_metadata
    )

"""What the client is told about functions and classes (handle metadata, app layouts).

Client 1.6.4 contracts found by reading it:
- `FunctionHandleMetadata.function_name` must be non-empty (asserted when hydrating).
- `FunctionGetResponse.function.ranked_functions` must hold at least one entry.
- A class service function ("Model.*") carries `method_handle_metadata` for every
  method; method calls read their own entry from it, and so does a bound
  (parametrized) variant returned by FunctionBindParams.
- A container hydrates its app purely from `ContainerArguments.app_layout`: every
  function and class of the app, plus each of the function's `object_dependencies`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from modal_proto import api_pb2

from homeport.server.services.apps import AppService, FunctionRow

FORMATS = [api_pb2.DATA_FORMAT_PICKLE, api_pb2.DATA_FORMAT_CBOR]


def handle_metadata(
    app_id: str,
    function_name: str,
    function_type: int,
    method_definitions: dict[str, api_pb2.MethodDefinition],
    class_parameter_info: api_pb2.ClassParameterInfo | None,
    web_url: str = "",
) -> api_pb2.FunctionHandleMetadata:
    metadata = api_pb2.FunctionHandleMetadata(
        function_name=function_name,
        function_type=function_type,  # type: ignore[arg-type]
        web_url=web_url,
        is_method=False,
        use_method_name="",
        app_id=app_id,
        supported_input_formats=FORMATS,
        supported_output_formats=FORMATS,
    )
    if class_parameter_info is not None:
        metadata.class_parameter_info.CopyFrom(class_parameter_info)
    class_name = function_name.removesuffix(".*")
    for method_name, definition in method_definitions.items():
        method = metadata.method_handle_metadata[method_name]
        method.function_name = f"{class_name}.{method_name}"
        method.function_type = definition.function_type
        method.is_method = True
        method.use_method_name = method_name
        method.app_id = app_id
        method.web_url = definition.web_url
        method.supported_input_formats.extend(definition.supported_input_formats or FORMATS)
        method.supported_output_formats.extend(definition.supported_output_formats or FORMATS)
        if class_parameter_info is not None:
            method.class_parameter_info.CopyFrom(class_parameter_info)
    return metadata


def metadata_for_definition(app_id: str, definition: api_pb2.Function) -> api_pb2.FunctionHandleMetadata:
    metadata = handle_metadata(
        app_id,
        definition.function_name,
        definition.function_type,
        dict(definition.method_definitions),
        definition.class_parameter_info if definition.is_class else None,
        web_url=definition.web_url,
    )
    # Web functions take their ASGI formats from the client's definition.
    if definition.supported_input_formats:
        del metadata.supported_input_formats[:]
        metadata.supported_input_formats.extend(definition.supported_input_formats)
    if definition.supported_output_formats:
        del metadata.supported_output_formats[:]
        metadata.supported_output_formats.extend(definition.supported_output_formats)
    return metadata


def function_data(definition: api_pb2.Function) -> api_pb2.FunctionData:
    data = api_pb2.FunctionData(
        module_name=definition.module_name,
        function_name=definition.function_name,
        function_type=definition.function_type,
        timeout_secs=definition.timeout_secs,
        is_class=definition.is_class,
        is_method=definition.is_method,
    )
    data.class_parameter_info.CopyFrom(definition.class_parameter_info)
    for name, method in definition.method_definitions.items():
        data.method_definitions[name].CopyFrom(method)
    data.method_definitions_set = definition.method_definitions_set
    ranked = data.ranked_functions.add()
    ranked.rank = 0
    ranked.function.CopyFrom(definition)
    return data


def effective_definition(apps: AppService, function: FunctionRow) -> tuple[api_pb2.Function, bytes]:
    """The definition a container runs, and its class parameters (bound variants inherit)."""
    if function.parent_id is None:
        if function.definition is None:
            raise LookupError(f"function {function.id} was never created")
        return function.definition, b""
    parent = apps.function(function.parent_id)
    definition = api_pb2.Function()
    definition.CopyFrom(parent.definition or api_pb2.Function())
    if function.options is not None:
        apply_options(definition, function.options)
    return definition, function.bound_params or b""


def apply_options(definition: api_pb2.Function, options: api_pb2.FunctionOptions) -> None:
    """What `Cls.with_options(...)` (and `with_concurrency`, `with_batching`) changes in a
    variant's definition. Client 1.6.4 sends only what the variant sets, and options cannot
    unset anything (its docs: `gpu=None` does not make a CPU-only instance), so resources
    merge into the class's; the autoscaler's new-style settings are set too, since they win
    over the legacy fields (services/autoscaling.py)."""
    if options.HasField("retry_policy"):
        definition.retry_policy.CopyFrom(options.retry_policy)
    if options.timeout_secs:
        definition.timeout_secs = options.timeout_secs
    if options.HasField("resources"):
        definition.resources.MergeFrom(options.resources)
    if options.replace_secret_ids:
        del definition.secret_ids[:]
    definition.secret_ids.extend(options.secret_ids)
    if options.replace_volume_mounts:
        del definition.volume_mounts[:]
        definition.volume_mounts.extend(options.volume_mounts)
    if options.max_concurrent_inputs:
        definition.max_concurrent_inputs = options.max_concurrent_inputs
    if options.target_concurrent_inputs:
        definition.target_concurrent_inputs = options.target_concurrent_inputs
    if options.batch_max_size:
        definition.batch_max_size = options.batch_max_size
        definition.batch_linger_ms = options.batch_linger_ms
    settings = definition.autoscaler_settings
    if options.concurrency_limit:
        definition.concurrency_limit = settings.max_containers = options.concurrency_limit
    if options.buffer_containers:
        settings.buffer_containers = options.buffer_containers
    if options.warm_pool_size:
        definition.warm_pool_size = settings.min_containers = options.warm_pool_size
    if options.task_idle_timeout_secs:
        definition.task_idle_timeout_secs = settings.scaledown_window = options.task_idle_timeout_secs


def gpu_request(resources: api_pb2.Resources) -> tuple[str, int] | None:
    """(model, count) of a definition's `gpu=`, in the names `gpu=` uses ("A100-80GB")."""
    config = resources.gpu_config
    if not config.gpu_type and not config.type:
        return None
    model = config.gpu_type or api_pb2.GPUType.Name(config.type).removeprefix("GPU_TYPE_").replace("_", "-")
    return model.upper(), max(config.count, 1)


def app_layout(apps: AppService, app_id: str, dependencies: list[str] | None = None) -> api_pb2.AppLayout:
    layout = apps.layout(app_id)
    present = {obj.object_id for obj in layout.objects}
    for object_id in dependencies or []:
        if object_id not in present:
            layout.objects.add(object_id=object_id)
            present.add(object_id)
    return layout


# --- schedules --------------------------------------------------------------------------


def next_schedule_time(schedule: api_pb2.Schedule, after: float) -> float | None:
    """When a modal.Period / modal.Cron schedule next fires after `after` (epoch seconds)."""
    kind = schedule.WhichOneof("schedule_oneof")
    if kind == "period":
        period = schedule.period
        seconds = (
            period.years * 365 * 86400
            + period.months * 30 * 86400
            + period.weeks * 7 * 86400
            + period.days * 86400
            + period.hours * 3600
            + period.minutes * 60
            + period.seconds
        )
        return after + seconds if seconds > 0 else None
    if kind == "cron":
        from zoneinfo import ZoneInfo

        from croniter import croniter

        zone = ZoneInfo(schedule.cron.timezone) if schedule.cron.timezone else UTC
        start = datetime.fromtimestamp(after, tz=zone)
        return float(croniter(schedule.cron.cron_string, start).get_next(datetime).timestamp())
    return None


def now() -> float:
    return time.time()

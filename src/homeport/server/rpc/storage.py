"""RPCs shared by every storage kind: the `*GetOrCreate`, `*List`, `*Delete`,
`*Heartbeat` and `*GetById` verbs, registered per kind from one definition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.services.storage import StorageObject

MAX_LIST = 1000


def register_storage_verbs(
    kind: str,
    prefix: str,
    id_field: str,
    metadata: Callable[[RequestContext, StorageObject], Any],
    list_item: Callable[[RequestContext, StorageObject], Any],
    list_field: str,
    on_create: Callable[[RequestContext, Any, StorageObject, bool], None] | None = None,
) -> None:
    """Register `{prefix}GetOrCreate`, `{prefix}List`, `{prefix}Delete`, `{prefix}Heartbeat`
    and `{prefix}GetById` for one kind; `on_create` sees each request with the resolved object."""
    response_of = getattr(api_pb2, f"{prefix}GetOrCreateResponse")
    list_response_of = getattr(api_pb2, f"{prefix}ListResponse")

    @handler(f"{prefix}GetOrCreate")
    async def get_or_create(context: RequestContext, request: Any) -> Any:
        environment = context.environment(request.environment_name)
        found, created = context.state.storage.get_or_create(
            kind,
            context.workspace_id,
            environment,
            request.deployment_name,
            request.object_creation_type,
            getattr(request, "app_id", "") or (context.task.app_id if context.task else ""),
        )
        if on_create is not None:
            on_create(context, request, found, created)
        return response_of(**{id_field: found.id, "metadata": metadata(context, found)})

    @handler(f"{prefix}List")
    async def list_objects(context: RequestContext, request: Any) -> Any:
        environment = context.environment(request.environment_name)
        pagination = request.pagination if request.HasField("pagination") else None
        found = context.state.storage.list(
            kind,
            context.workspace_id,
            environment,
            limit=min(pagination.max_objects or MAX_LIST, MAX_LIST) if pagination else MAX_LIST,
            created_before=pagination.created_before if pagination else 0.0,
        )
        return list_response_of(
            **{list_field: [list_item(context, o) for o in found], "environment_name": environment}
        )

    @handler(f"{prefix}Delete")
    async def delete(context: RequestContext, request: Any) -> empty_pb2.Empty:
        context.state.storage.delete(kind, context.workspace_id, getattr(request, id_field))
        return empty_pb2.Empty()

    @handler(f"{prefix}Heartbeat")
    async def heartbeat(context: RequestContext, request: Any) -> empty_pb2.Empty:
        context.state.storage.heartbeat(kind, context.workspace_id, getattr(request, id_field))
        return empty_pb2.Empty()

    by_id_response = getattr(api_pb2, f"{prefix}GetByIdResponse", None)
    if by_id_response is not None:

        @handler(f"{prefix}GetById")
        async def get_by_id(context: RequestContext, request: Any) -> Any:
            found = context.state.storage.get(kind, context.workspace_id, getattr(request, id_field))
            return by_id_response(**{id_field: found.id, "metadata": metadata(context, found)})

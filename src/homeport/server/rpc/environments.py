"""Environments and the client's handshake RPCs."""

from __future__ import annotations

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server.context import RequestContext
from homeport.server.rpc import handler

# The image builder version this server announces; the client picks its base image
# commands (e.g. python:3.11.12-slim-bookworm) from it.
IMAGE_BUILDER_VERSION = "2025.06"


@handler("ClientHello")
async def client_hello(context: RequestContext, request: object) -> api_pb2.ClientHelloResponse:
    return api_pb2.ClientHelloResponse(image_builder_version=IMAGE_BUILDER_VERSION)


@handler("EnvironmentGetOrCreate")
async def environment_get_or_create(
    context: RequestContext, request: api_pb2.EnvironmentGetOrCreateRequest
) -> api_pb2.EnvironmentGetOrCreateResponse:
    name = context.environment(request.deployment_name)
    environment_id = context.state.environments.get_or_create(context.workspace_id, name)
    return api_pb2.EnvironmentGetOrCreateResponse(
        environment_id=environment_id,
        metadata=api_pb2.EnvironmentMetadata(
            name=name,
            settings=api_pb2.EnvironmentSettings(
                image_builder_version=IMAGE_BUILDER_VERSION, webhook_suffix=""
            ),
        ),
    )


@handler("EnvironmentList")
async def environment_list(context: RequestContext, request: object) -> api_pb2.EnvironmentListResponse:
    items = [
        api_pb2.EnvironmentListItem(name=name, environment_id=environment_id)
        for environment_id, name in context.state.environments.list(context.workspace_id)
    ]
    return api_pb2.EnvironmentListResponse(items=items)


@handler("EnvironmentCreate")
async def environment_create(
    context: RequestContext, request: api_pb2.EnvironmentCreateRequest
) -> empty_pb2.Empty:
    context.state.environments.get_or_create(context.workspace_id, request.name)
    return empty_pb2.Empty()


@handler("WorkspaceNameLookup")
async def workspace_name_lookup(
    context: RequestContext, request: object
) -> api_pb2.WorkspaceNameLookupResponse:
    name = context.state.auth.workspace_name(context.workspace_id)
    return api_pb2.WorkspaceNameLookupResponse(workspace_name=name, username=name)

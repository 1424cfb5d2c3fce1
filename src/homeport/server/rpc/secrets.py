"""Secret RPCs. Values go in encrypted and come out only as container environment."""

from __future__ import annotations

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.rpc.storage import register_storage_verbs
from homeport.server.services.storage import StorageObject


def _metadata(context: RequestContext, found: StorageObject) -> api_pb2.SecretMetadata:
    return api_pb2.SecretMetadata(
        name=found.name or "",
        keys=context.state.secrets.keys(found.id),
        environment_name=found.environment_name,
        creation_info=api_pb2.CreationInfo(created_at=found.created_at),
    )


def _list_item(context: RequestContext, found: StorageObject) -> api_pb2.SecretListItem:
    return api_pb2.SecretListItem(
        label=found.name or "",
        created_at=found.created_at,
        environment_name=found.environment_name,
        secret_id=found.id,
        metadata=_metadata(context, found),
    )


def _store_values(
    context: RequestContext, request: api_pb2.SecretGetOrCreateRequest, found: StorageObject, created: bool
) -> None:
    overwrite = request.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS
    if (created or overwrite) and (request.env_dict or created):
        context.state.secrets.set(found.id, dict(request.env_dict))
    if request.required_keys:
        missing = sorted(set(request.required_keys) - set(context.state.secrets.keys(found.id)))
        if missing:
            raise errors.not_found(
                f"Secret '{found.name or found.id}' is missing the required keys: {', '.join(missing)}"
            )


register_storage_verbs("secret", "Secret", "secret_id", _metadata, _list_item, "items", _store_values)


@handler("SecretGetInfo")
async def secret_get_info(
    context: RequestContext, request: api_pb2.SecretGetInfoRequest
) -> api_pb2.SecretGetInfoResponse:
    found = context.state.storage.get("secret", context.workspace_id, request.secret_id)
    return api_pb2.SecretGetInfoResponse(metadata=_metadata(context, found))


@handler("SecretUpdate")
async def secret_update(context: RequestContext, request: api_pb2.SecretUpdateRequest) -> empty_pb2.Empty:
    found = context.state.storage.get("secret", context.workspace_id, request.secret_id)
    context.state.secrets.set(
        found.id, {update.key: update.value for update in request.updates}, replace=False
    )
    return empty_pb2.Empty()

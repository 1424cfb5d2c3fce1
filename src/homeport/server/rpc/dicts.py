"""Dict RPCs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.rpc.storage import register_storage_verbs
from homeport.server.services.storage import StorageObject

MAX_ENTRY_BYTES = 16 * 1024 * 1024


def _metadata(context: RequestContext, found: StorageObject) -> api_pb2.DictMetadata:
    return api_pb2.DictMetadata(
        name=found.name or "", creation_info=api_pb2.CreationInfo(created_at=found.created_at)
    )


def _list_item(context: RequestContext, found: StorageObject) -> api_pb2.DictListResponse.DictInfo:
    return api_pb2.DictListResponse.DictInfo(
        name=found.name or "",
        created_at=found.created_at,
        dict_id=found.id,
        metadata=_metadata(context, found),
    )


def _initial_data(
    context: RequestContext, request: api_pb2.DictGetOrCreateRequest, found: StorageObject, created: bool
) -> None:
    if created and request.data:
        context.state.dicts.update(found.id, [(e.key, e.value) for e in request.data], if_not_exists=False)


register_storage_verbs("dict", "Dict", "dict_id", _metadata, _list_item, "dicts", _initial_data)


def _dict_id(context: RequestContext, dict_id: str) -> str:
    return context.state.storage.check("dict", context.workspace_id, dict_id)


@handler("DictGet")
async def dict_get(context: RequestContext, request: api_pb2.DictGetRequest) -> api_pb2.DictGetResponse:
    value = context.state.dicts.get(_dict_id(context, request.dict_id), request.key)
    return api_pb2.DictGetResponse(found=value is not None, value=value or b"")


@handler("DictContains")
async def dict_contains(
    context: RequestContext, request: api_pb2.DictContainsRequest
) -> api_pb2.DictContainsResponse:
    value = context.state.dicts.get(_dict_id(context, request.dict_id), request.key)
    return api_pb2.DictContainsResponse(found=value is not None)


@handler("DictUpdate")
async def dict_update(
    context: RequestContext, request: api_pb2.DictUpdateRequest
) -> api_pb2.DictUpdateResponse:
    dict_id = _dict_id(context, request.dict_id)
    for entry in request.updates:
        if len(entry.key) + len(entry.value) > MAX_ENTRY_BYTES:
            raise errors.invalid_argument(
                f"a Dict entry of {len(entry.key) + len(entry.value)} bytes is over the {MAX_ENTRY_BYTES}-byte limit; "
                "store large values in a Volume and keep their paths in the Dict"
            )
    created = context.state.dicts.update(
        dict_id, [(e.key, e.value) for e in request.updates], request.if_not_exists
    )
    return api_pb2.DictUpdateResponse(created=created)


@handler("DictPop")
async def dict_pop(context: RequestContext, request: api_pb2.DictPopRequest) -> api_pb2.DictPopResponse:
    value = context.state.dicts.pop(_dict_id(context, request.dict_id), request.key)
    return api_pb2.DictPopResponse(found=value is not None, value=value or b"")


@handler("DictLen")
async def dict_len(context: RequestContext, request: api_pb2.DictLenRequest) -> api_pb2.DictLenResponse:
    return api_pb2.DictLenResponse(len=context.state.dicts.length(_dict_id(context, request.dict_id)))


@handler("DictClear")
async def dict_clear(context: RequestContext, request: api_pb2.DictClearRequest) -> empty_pb2.Empty:
    context.state.dicts.clear(_dict_id(context, request.dict_id))
    return empty_pb2.Empty()


@handler("DictContents")
async def dict_contents(
    context: RequestContext,
    request: api_pb2.DictContentsRequest,
    send: Callable[[api_pb2.DictEntry], Awaitable[None]],
) -> None:
    for key, value in context.state.dicts.contents(_dict_id(context, request.dict_id)):
        await send(
            api_pb2.DictEntry(key=key if request.keys else b"", value=value if request.values else b"")
        )

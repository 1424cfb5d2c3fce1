"""Queue RPCs. Blocking gets wake as soon as an item is put (no polling tick)."""

from __future__ import annotations

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.notify import poll
from homeport.server.rpc import handler
from homeport.server.rpc.storage import register_storage_verbs
from homeport.server.services.queues import items_key
from homeport.server.services.storage import StorageObject

MAX_POLL_S = 55.0
MAX_VALUES_PER_GET = 1000


def _metadata(context: RequestContext, found: StorageObject) -> api_pb2.QueueMetadata:
    return api_pb2.QueueMetadata(
        name=found.name or "", creation_info=api_pb2.CreationInfo(created_at=found.created_at)
    )


def _list_item(context: RequestContext, found: StorageObject) -> api_pb2.QueueListResponse.QueueInfo:
    return api_pb2.QueueListResponse.QueueInfo(
        name=found.name or "",
        created_at=found.created_at,
        queue_id=found.id,
        num_partitions=context.state.queues.partition_count(found.id),
        total_size=context.state.queues.length(found.id, None),
        metadata=_metadata(context, found),
    )


register_storage_verbs("queue", "Queue", "queue_id", _metadata, _list_item, "queues")


def _queue_id(context: RequestContext, queue_id: str) -> str:
    return context.state.storage.check("queue", context.workspace_id, queue_id)


def _partition(key: bytes) -> bytes:
    if len(key) > 64:
        raise errors.invalid_argument("a Queue partition key must be at most 64 bytes")
    return key


@handler("QueuePut")
async def queue_put(context: RequestContext, request: api_pb2.QueuePutRequest) -> empty_pb2.Empty:
    context.state.queues.put(
        _queue_id(context, request.queue_id),
        _partition(request.partition_key),
        list(request.values),
        request.partition_ttl_seconds,
    )
    return empty_pb2.Empty()


@handler("QueueGet")
async def queue_get(context: RequestContext, request: api_pb2.QueueGetRequest) -> api_pb2.QueueGetResponse:
    queue_id = _queue_id(context, request.queue_id)
    partition = _partition(request.partition_key)
    limit = min(max(request.n_values, 1), MAX_VALUES_PER_GET)
    values = await poll(
        context.state.notifier,
        [items_key(queue_id, partition)],
        lambda: context.state.queues.take(queue_id, partition, limit),
        min(request.timeout, MAX_POLL_S),
    )
    return api_pb2.QueueGetResponse(values=values)


@handler("QueueNextItems")
async def queue_next_items(
    context: RequestContext, request: api_pb2.QueueNextItemsRequest
) -> api_pb2.QueueNextItemsResponse:
    queue_id = _queue_id(context, request.queue_id)
    partition = _partition(request.partition_key)
    after = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
    items = await poll(
        context.state.notifier,
        [items_key(queue_id, partition)],
        lambda: context.state.queues.peek_after(queue_id, partition, after),
        min(request.item_poll_timeout, MAX_POLL_S),
    )
    return api_pb2.QueueNextItemsResponse(
        items=[api_pb2.QueueItem(value=value, entry_id=str(seq)) for seq, value in items]
    )


@handler("QueueLen")
async def queue_len(context: RequestContext, request: api_pb2.QueueLenRequest) -> api_pb2.QueueLenResponse:
    partition = None if request.total else _partition(request.partition_key)
    return api_pb2.QueueLenResponse(
        len=context.state.queues.length(_queue_id(context, request.queue_id), partition)
    )


@handler("QueueClear")
async def queue_clear(context: RequestContext, request: api_pb2.QueueClearRequest) -> empty_pb2.Empty:
    partition = None if request.all_partitions else _partition(request.partition_key)
    context.state.queues.clear(_queue_id(context, request.queue_id), partition)
    return empty_pb2.Empty()

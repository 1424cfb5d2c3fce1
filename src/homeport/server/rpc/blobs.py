"""Blob RPCs: hand out upload and download URLs for Homeport's blob listener."""

from __future__ import annotations

from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler


@handler("BlobCreate")
async def blob_create(
    context: RequestContext, request: api_pb2.BlobCreateRequest
) -> api_pb2.BlobCreateResponse:
    if request.content_length < 0:
        raise errors.invalid_argument("content_length must not be negative")
    blobs = context.state.blobs
    refusal = blobs.refusal(request.content_length)
    if refusal is not None:
        raise errors.resource_exhausted(refusal)
    blob_id = blobs.create(context.workspace_id, request.content_length, request.content_md5)
    # Client 1.6.4 reads only the plural fields (blob_ids, upload_urls.items).
    return api_pb2.BlobCreateResponse(
        blob_ids=[blob_id],
        upload_urls=api_pb2.UploadUrlList(
            items=[
                blobs.url(
                    blob_id,
                    "put",
                    context.state.blob_base_url(context.task.task_id if context.task is not None else None),
                )
            ]
        ),
    )


@handler("BlobGet")
async def blob_get(context: RequestContext, request: api_pb2.BlobGetRequest) -> api_pb2.BlobGetResponse:
    blobs = context.state.blobs
    if not blobs.exists(request.blob_id):
        raise errors.not_found(f"blob {request.blob_id} not found")
    return api_pb2.BlobGetResponse(
        download_url=blobs.url(
            request.blob_id,
            "get",
            context.state.blob_base_url(context.task.task_id if context.task is not None else None),
        )
    )

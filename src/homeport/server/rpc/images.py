"""Image RPCs: ImageGetOrCreate answers with the finished result; ImageJoinStreaming
replays it for clients that join."""

from __future__ import annotations

import platform
from collections.abc import Awaitable, Callable

from modal_proto import api_pb2

from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.rpc.environments import IMAGE_BUILDER_VERSION


def _metadata(context: RequestContext) -> api_pb2.ImageMetadata:
    major, minor = context.state.images.runtime_python
    return api_pb2.ImageMetadata(
        python_version_info=f"Python {major}.{minor}",
        libc_version_info=" ".join(platform.libc_ver()),
        image_builder_version=IMAGE_BUILDER_VERSION,
        workdir="/root",
    )


def _result(status: int, exception: str) -> api_pb2.GenericResult:
    return api_pb2.GenericResult(status=status, exception=exception)  # type: ignore[arg-type]


@handler("ImageGetOrCreate")
async def image_get_or_create(
    context: RequestContext, request: api_pb2.ImageGetOrCreateRequest
) -> api_pb2.ImageGetOrCreateResponse:
    image_id, status, exception = context.state.images.get_or_create(
        context.workspace_id, request.image, request.builder_version or IMAGE_BUILDER_VERSION
    )
    # A set result tells client 1.6.4 the build is finished (it skips ImageJoinStreaming).
    return api_pb2.ImageGetOrCreateResponse(
        image_id=image_id, result=_result(status, exception), metadata=_metadata(context)
    )


@handler("ImageJoinStreaming")
async def image_join_streaming(
    context: RequestContext,
    request: api_pb2.ImageJoinStreamingRequest,
    send: Callable[[api_pb2.ImageJoinStreamingResponse], Awaitable[None]],
) -> None:
    status, exception = context.state.images.get(context.workspace_id, request.image_id)
    await send(
        api_pb2.ImageJoinStreamingResponse(
            result=_result(status, exception), metadata=_metadata(context), entry_id="1", eof=True
        )
    )

"""Image RPCs: ImageGetOrCreate finds or starts a build; ImageJoinStreaming streams its
log live and then its result; ImageFromId looks up a built one."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Awaitable, Callable

from modal_proto import api_pb2

from homeport.images.config import ImageConfig
from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.rpc.environments import IMAGE_BUILDER_VERSION
from homeport.server.services.images import PENDING, SUCCESS

JOIN_TIMEOUT_S = 55.0


def image_metadata(config: ImageConfig | None) -> api_pb2.ImageMetadata | None:
    if config is None:
        return None
    return api_pb2.ImageMetadata(
        # The client matches r"Python 3\.10\." on this to warn about end-of-life Pythons.
        python_version_info=f"Python {config.python_version}" if config.python_version else "",
        libc_version_info=" ".join(platform.libc_ver()),
        image_builder_version=IMAGE_BUILDER_VERSION,
        workdir=config.workdir or "/",
    )


def _result(status: int, exception: str) -> api_pb2.GenericResult:
    return api_pb2.GenericResult(status=status, exception=exception)  # type: ignore[arg-type]


@handler("ImageGetOrCreate")
async def image_get_or_create(
    context: RequestContext, request: api_pb2.ImageGetOrCreateRequest
) -> api_pb2.ImageGetOrCreateResponse:
    images = context.state.images
    # Everything the definition names must be the caller's: a build prints what it sees.
    for secret_id in request.image.secret_ids:
        context.state.storage.get("secret", context.workspace_id, secret_id)
    if request.image.context_mount_id:
        context.state.mounts.check_visible(context.workspace_id, request.image.context_mount_id)
    if request.build_function_id:
        build_function = context.state.apps.function(request.build_function_id)
        context.state.apps.get(context.workspace_id, build_function.app_id)
    image_id, status, exception = images.get_or_create(
        context.workspace_id,
        request.image,
        request.builder_version or IMAGE_BUILDER_VERSION,
        request.force_build,
        request.build_function_id,
    )
    if status == PENDING:
        # An unset result tells client 1.6.4 to follow the build with ImageJoinStreaming.
        return api_pb2.ImageGetOrCreateResponse(image_id=image_id)
    _, _, config = images.status(context.workspace_id, image_id)
    return api_pb2.ImageGetOrCreateResponse(
        image_id=image_id, result=_result(status, exception), metadata=image_metadata(config)
    )


@handler("ImageJoinStreaming")
async def image_join_streaming(
    context: RequestContext,
    request: api_pb2.ImageJoinStreamingRequest,
    send: Callable[[api_pb2.ImageJoinStreamingResponse], Awaitable[None]],
) -> None:
    """Log entries after `last_entry_id` as they are written; once the build has ended and
    its log is drained, the result (with eof). A stream that reaches its timeout just ends:
    the client joins again from its last entry."""
    images = context.state.images
    notifier = context.state.notifier
    image_id = request.image_id
    after = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(request.timeout or JOIN_TIMEOUT_S, JOIN_TIMEOUT_S)
    while True:
        with notifier.listen(f"image:{image_id}") as listener:
            status, exception, config = images.status(context.workspace_id, image_id)
            entries = images.log_entries(image_id, after)
            for seq, data in entries:
                after = seq
                await send(
                    api_pb2.ImageJoinStreamingResponse(
                        entry_id=str(seq),
                        task_logs=[
                            api_pb2.TaskLogs(data=data, file_descriptor=api_pb2.FILE_DESCRIPTOR_STDOUT)
                        ],
                    )
                )
            if status != PENDING and not entries:
                await send(
                    api_pb2.ImageJoinStreamingResponse(
                        result=_result(status, exception),
                        metadata=image_metadata(config),
                        entry_id=str(after),
                        eof=True,
                    )
                )
                return
            if entries:
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await listener.wait(remaining)


@handler("ImageFromId")
async def image_from_id(
    context: RequestContext, request: api_pb2.ImageFromIdRequest
) -> api_pb2.ImageFromIdResponse:
    """modal.Image.from_id: an image already built (by a build or a sandbox's snapshot),
    for use as `image=`. One still building or failed cannot run anything: say so."""
    status, exception, config = context.state.images.status(context.workspace_id, request.image_id)
    if status == PENDING:
        raise errors.failed_precondition(
            f"image {request.image_id} is still being built; use it once its build has finished"
        )
    if status != SUCCESS:
        raise errors.failed_precondition(
            f"image {request.image_id} failed to build ({exception or 'no message'}); build it again"
        )
    return api_pb2.ImageFromIdResponse(image_id=request.image_id, metadata=image_metadata(config))

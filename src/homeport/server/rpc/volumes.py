"""Volume RPCs (the v2 protocol of client 1.6.4) and the container side of commit/reload."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.rpc.storage import register_storage_verbs
from homeport.server.services.storage import StorageObject
from homeport.server.services.volumes import BLOCK_SIZE, volume_metadata

LIST_BATCH = 500


def _metadata(context: RequestContext, found: StorageObject) -> api_pb2.VolumeMetadata:
    return volume_metadata(found)


def _list_item(context: RequestContext, found: StorageObject) -> api_pb2.VolumeListItem:
    return api_pb2.VolumeListItem(
        label=found.name or "",
        volume_id=found.id,
        created_at=found.created_at,
        metadata=volume_metadata(found),
    )


def _check_version(
    context: RequestContext, request: api_pb2.VolumeGetOrCreateRequest, found: StorageObject, created: bool
) -> None:
    # Client 1.6.4 leaves the version unset and follows the server's choice (v2).
    if request.version == api_pb2.VOLUME_FS_VERSION_V1:
        raise errors.invalid_argument(
            "Homeport serves Volumes in version 2 only; create it without --version 1"
        )


register_storage_verbs("volume", "Volume", "volume_id", _metadata, _list_item, "items", _check_version)


def _volume_id(context: RequestContext, volume_id: str) -> str:
    return context.state.storage.get("volume", context.workspace_id, volume_id).id


@handler("VolumeRename")
async def volume_rename(context: RequestContext, request: api_pb2.VolumeRenameRequest) -> empty_pb2.Empty:
    context.state.storage.rename("volume", context.workspace_id, request.volume_id, request.name)
    return empty_pb2.Empty()


@handler("VolumeListFiles2")
async def volume_list_files2(
    context: RequestContext,
    request: api_pb2.VolumeListFiles2Request,
    send: Callable[[api_pb2.VolumeListFiles2Response], Awaitable[None]],
) -> None:
    entries = context.state.volumes.list(
        _volume_id(context, request.volume_id), request.path, request.recursive
    )
    if request.max_entries:
        entries = entries[: request.max_entries]
    for start in range(0, max(len(entries), 1), LIST_BATCH):
        await send(
            api_pb2.VolumeListFiles2Response(
                entries=[
                    api_pb2.FileEntry(
                        path=e.path,
                        type=api_pb2.FileEntry.DIRECTORY if e.is_dir else api_pb2.FileEntry.FILE,
                        mtime=int(e.mtime),
                        size=e.size,
                    )
                    for e in entries[start : start + LIST_BATCH]
                ]
            )
        )


@handler("VolumeGetFile2")
async def volume_get_file2(
    context: RequestContext, request: api_pb2.VolumeGetFile2Request
) -> api_pb2.VolumeGetFile2Response:
    volume_id = _volume_id(context, request.volume_id)
    entry = context.state.volumes.entry(volume_id, request.path)
    if entry is None or entry.is_dir:
        raise errors.not_found(f"no file '{request.path}' in the volume")
    start = min(request.start, entry.size)
    length = entry.size - start if not request.len else min(request.len, entry.size - start)
    urls = [
        context.state.blobs.volume_content_url(
            entry.sha256 or "",
            offset,
            min(BLOCK_SIZE, start + length - offset),
            context.state.blob_base_url(context.task.task_id if context.task is not None else None),
        )
        for offset in range(start, start + length, BLOCK_SIZE)
    ]
    return api_pb2.VolumeGetFile2Response(get_urls=urls, size=entry.size, start=start, len=length)


@handler("VolumePutFiles2")
async def volume_put_files2(
    context: RequestContext, request: api_pb2.VolumePutFiles2Request
) -> api_pb2.VolumePutFiles2Response:
    volume_id = _volume_id(context, request.volume_id)
    files = [(f.path, f.size, f.mode, [b.contents_sha256.hex() for b in f.blocks]) for f in request.files]
    for path, size, _, blocks in files:
        if len(blocks) != -(-size // BLOCK_SIZE):
            raise errors.invalid_argument(
                f"file {path!r} of {size} bytes needs {-(-size // BLOCK_SIZE)} blocks"
            )
    missing = await context.state.volumes.put_files(
        volume_id, files, request.disallow_overwrite_existing_files
    )
    return api_pb2.VolumePutFiles2Response(
        missing_blocks=[
            api_pb2.VolumePutFiles2Response.MissingBlock(
                file_index=file_index,
                block_index=block_index,
                put_url=context.state.blobs.volume_block_url(
                    files[file_index][3][block_index],
                    context.state.blob_base_url(context.task.task_id if context.task is not None else None),
                ),
            )
            for file_index, block_index in missing
        ]
    )


@handler("VolumeRemoveFile2")
async def volume_remove_file2(
    context: RequestContext, request: api_pb2.VolumeRemoveFile2Request
) -> empty_pb2.Empty:
    context.state.volumes.remove(_volume_id(context, request.volume_id), request.path, request.recursive)
    return empty_pb2.Empty()


@handler("VolumeCopyFiles2")
async def volume_copy_files2(
    context: RequestContext, request: api_pb2.VolumeCopyFiles2Request
) -> empty_pb2.Empty:
    context.state.volumes.copy(
        _volume_id(context, request.volume_id), list(request.src_paths), request.dst_path, request.recursive
    )
    return empty_pb2.Empty()


@handler("VolumeCommit")
async def volume_commit(
    context: RequestContext, request: api_pb2.VolumeCommitRequest
) -> api_pb2.VolumeCommitResponse:
    """From a container, stores its working copy's changes; elsewhere there is nothing to do."""
    volume_id = _volume_id(context, request.volume_id)
    if context.task is not None:
        await context.state.scheduler.commit_volume(context.task.task_id, volume_id)
    return api_pb2.VolumeCommitResponse(skip_reload=True)


@handler("VolumeReload")
async def volume_reload(context: RequestContext, request: api_pb2.VolumeReloadRequest) -> empty_pb2.Empty:
    volume_id = _volume_id(context, request.volume_id)
    if context.task is not None:
        await context.state.scheduler.reload_volume(context.task.task_id, volume_id)
    return empty_pb2.Empty()

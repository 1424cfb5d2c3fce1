"""Mount RPCs: upload files by hash, then create a mount listing them."""

from __future__ import annotations

from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler
from homeport.server.services.mounts import CLIENT_MOUNT_NAME

MAX_FILES_PER_MOUNT = 100_000


@handler("MountBatchedCheckExistence")
async def mount_batched_check_existence(
    context: RequestContext, request: api_pb2.MountBatchedCheckExistenceRequest
) -> api_pb2.MountBatchedCheckExistenceResponse:
    missing = context.state.mounts.missing(list(request.sha256_hex_hashes))
    return api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)


@handler("MountPutFile")
async def mount_put_file(
    context: RequestContext, request: api_pb2.MountPutFileRequest
) -> api_pb2.MountPutFileResponse:
    if len(request.sha256_hex) != 64:
        raise errors.invalid_argument("sha256_hex must be 64 hex characters")
    kind = request.WhichOneof("data_oneof")
    context.state.mounts.put_file(
        request.sha256_hex,
        request.data if kind == "data" else None,
        request.data_blob_id if kind == "data_blob_id" else None,
    )
    # Client 1.6.4 repeats MountPutFile until it answers exists=True.
    return api_pb2.MountPutFileResponse(exists=True)


@handler("MountGetOrCreate")
async def mount_get_or_create(
    context: RequestContext, request: api_pb2.MountGetOrCreateRequest
) -> api_pb2.MountGetOrCreateResponse:
    if request.namespace == api_pb2.DEPLOYMENT_NAMESPACE_GLOBAL:
        if request.deployment_name != CLIENT_MOUNT_NAME:
            raise errors.not_found(
                f"global mount '{request.deployment_name}' not found; this server provides only {CLIENT_MOUNT_NAME}"
            )
        return api_pb2.MountGetOrCreateResponse(mount_id=context.state.mounts.client_mount_id())
    if len(request.files) > MAX_FILES_PER_MOUNT:
        raise errors.invalid_argument(f"a mount may hold at most {MAX_FILES_PER_MOUNT} files")
    files: list[dict[str, object]] = []
    for f in request.files:
        if not f.filename.startswith("/") or ".." in f.filename.split("/"):
            raise errors.invalid_argument(
                f"mount file path {f.filename!r} must be absolute and stay inside /"
            )
        files.append({"path": f.filename, "sha256": f.sha256_hex, "mode": f.mode or 0o644})
    mount_id = context.state.mounts.create(context.workspace_id, request.deployment_name or None, files)
    return api_pb2.MountGetOrCreateResponse(mount_id=mount_id)

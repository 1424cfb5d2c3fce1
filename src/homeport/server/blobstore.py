"""Blob storage: payloads and files too large for a gRPC message, addressed by blob id.

The client uploads and downloads blobs through URLs the server hands out (S3-style:
`PUT` answers an `ETag` that is the MD5 of the body, which the client checks). Here
the URLs point at Homeport's own HTTP listener and carry an HMAC signature, so only a
holder of the URL can use it. The local-directory store is the default; an S3 store
for cluster mode would hand out presigned S3 URLs instead and keep the same interface.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from aiohttp import web

from homeport import ids
from homeport.config import DataLayout
from homeport.objectstore import LocalCopies
from homeport.server.store import schema

CHUNK_SIZE = 1024 * 1024
# How long an upload or download URL stays valid.
URL_LIFETIME_S = 3600
# Disk the blob store leaves free for the database, logs and containers.
DISK_RESERVE_BYTES = 2 * 2**30


class BlobMissing(ValueError):
    """An upload for a blob that does not exist (never made, or collected)."""


class LocalBlobStore:
    def __init__(
        self,
        layout: DataLayout,
        engine: sa.Engine,
        base_url: str,
        signing_key: bytes,
        max_bytes: int = 64 * 2**30,
        shared: LocalCopies | None = None,
    ) -> None:
        """With `shared` (cluster mode), every blob is also written to the object store, and
        one stored by another replica is fetched from there on first use."""
        self.layout = layout
        self.shared = shared
        self.engine = engine
        self.base_url = base_url
        self.max_bytes = max_bytes
        self._key = signing_key

    def refusal(self, size: int) -> str | None:
        """Why a blob of this size cannot be stored here, or None."""
        if size > self.max_bytes:
            return (
                f"a blob of {size} bytes is over this server's limit of {self.max_bytes} bytes "
                "(HOMEPORT_BLOB_MAX_BYTES); pass large data through a Volume instead"
            )
        self.layout.blobs.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.layout.blobs).free - DISK_RESERVE_BYTES
        if size > free:
            return f"a blob of {size} bytes does not fit: the server has {max(free, 0)} bytes of disk free for blobs"
        return None

    # --- ids and URLs ---------------------------------------------------------------

    def create(self, workspace_id: str | None, size: int | None = None, md5_base64: str = "") -> str:
        blob_id = ids.new_id("blob")
        with self.engine.begin() as connection:
            connection.execute(
                schema.blobs.insert().values(
                    id=blob_id,
                    workspace_id=workspace_id,
                    size=size,
                    md5_base64=md5_base64,
                    created_at=time.time(),
                )
            )
        return blob_id

    def _signature(self, blob_id: str, operation: str, expires: int) -> str:
        message = f"{operation}:{blob_id}:{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def url(self, blob_id: str, operation: str, base_url: str | None = None) -> str:
        expires = int(time.time()) + URL_LIFETIME_S
        signature = self._signature(blob_id, operation, expires)
        return f"{base_url or self.base_url}/blobs/{blob_id}?op={operation}&expires={expires}&sig={signature}"

    def volume_content_url(
        self, sha256_hex: str, offset: int, length: int, base_url: str | None = None
    ) -> str:
        key = f"{sha256_hex}:{offset}:{length}"
        expires = int(time.time()) + URL_LIFETIME_S
        signature = self._signature(key, "vget", expires)
        return (
            f"{base_url or self.base_url}/volume-content/{sha256_hex}?offset={offset}&length={length}"
            f"&expires={expires}&sig={signature}"
        )

    def volume_block_url(self, sha256_hex: str, base_url: str | None = None) -> str:
        expires = int(time.time()) + URL_LIFETIME_S
        return f"{base_url or self.base_url}/volume-blocks/{sha256_hex}?expires={expires}&sig={self._signature(sha256_hex, 'vput', expires)}"

    def check_signature(self, blob_id: str, operation: str, expires: str, signature: str) -> bool:
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(blob_id, operation, int(expires)), signature)

    # --- content ---------------------------------------------------------------------

    def exists(self, blob_id: str) -> bool:
        return ids.is_id("blob", blob_id) and self.path(blob_id).exists()

    def path(self, blob_id: str) -> Path:
        local = self.layout.blob(blob_id)
        if self.shared is not None and not local.exists() and ids.is_id("blob", blob_id):
            self.shared.fetch(blob_key(blob_id), local)
        return local

    def put_bytes(self, data: bytes, workspace_id: str | None = None) -> str:
        """Store data written by the server itself (e.g. a large result it made)."""
        blob_id = self.create(workspace_id, size=len(data))
        temporary = self.layout.uploads / f"{blob_id}.part"
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        self._publish(blob_id, temporary)
        return blob_id

    def remove_file(self, blob_id: str) -> int:
        """Delete a blob's content (its row is gone already); returns the bytes freed."""
        if self.shared is not None:
            self.shared.store.delete(blob_key(blob_id))
        path = self.layout.blob(blob_id)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def read_bytes(self, blob_id: str) -> bytes:
        return self.path(blob_id).read_bytes()

    async def receive(self, blob_id: str, chunks: AsyncIterator[bytes]) -> str:
        """Stream an upload to disk; it becomes visible only once whole and synced. An upload
        longer than the size declared to BlobCreate is refused (ValueError).

        Returns the MD5 hex digest of what was received (the S3 ETag)."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(schema.blobs.c.size).where(schema.blobs.c.id == blob_id)
            ).first()
        if row is None:
            raise BlobMissing(
                f"blob {blob_id} does not exist (any more); ask for a new upload URL with BlobCreate"
            )
        limit = self.max_bytes if row.size is None else row.size
        temporary = self.layout.uploads / f"{blob_id}.{os.getpid()}.{time.monotonic_ns()}.part"
        digest = hashlib.md5()
        size = 0
        try:
            with open(temporary, "wb") as file:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    if size > limit:
                        raise ValueError(
                            f"the upload is longer than the {limit} bytes declared for blob {blob_id}"
                        )
                    file.write(chunk)
                file.flush()
                os.fsync(file.fileno())
            self._publish(blob_id, temporary)
        finally:
            temporary.unlink(missing_ok=True)
        with self.engine.begin() as connection:
            connection.execute(
                schema.blobs.update().where(schema.blobs.c.id == blob_id).values(size=size, complete=True)
            )
        return digest.hexdigest()

    def _publish(self, blob_id: str, temporary: Path) -> None:
        final = self.layout.blob(blob_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        if self.shared is not None:
            self.shared.store.upload(blob_key(blob_id), temporary)
        os.replace(temporary, final)


def blob_key(blob_id: str) -> str:
    """A blob's key in the object store."""
    return f"blobs/{blob_id}"


def blob_routes(store: LocalBlobStore) -> list[web.RouteDef]:
    """HTTP endpoints behind the URLs `LocalBlobStore.url` signs."""

    def authorize(request: web.Request, operation: str) -> str:
        blob_id = request.match_info["blob_id"]
        query = request.rel_url.query
        if query.get("op") != operation or not store.check_signature(
            blob_id, operation, query.get("expires", ""), query.get("sig", "")
        ):
            raise web.HTTPForbidden(text="invalid or expired blob URL; ask the server for a new one")
        return blob_id

    async def put_blob(request: web.Request) -> web.Response:
        blob_id = authorize(request, "put")
        try:
            etag = await store.receive(blob_id, request.content.iter_chunked(CHUNK_SIZE))
        except BlobMissing as error:
            raise web.HTTPNotFound(text=str(error)) from None
        except ValueError as error:
            raise web.HTTPRequestEntityTooLarge(max_size=0, actual_size=0, text=str(error)) from None
        expected_md5 = request.headers.get("Content-MD5")
        if expected_md5:
            if base64.b64encode(bytes.fromhex(etag)).decode() != expected_md5:
                raise web.HTTPBadRequest(text="The Content-MD5 you specified did not match what we received.")
        return web.Response(status=200, headers={"ETag": f'"{etag}"'})

    async def get_blob(request: web.Request) -> web.StreamResponse:
        blob_id = authorize(request, "get")
        if not store.exists(blob_id):
            raise web.HTTPNotFound(text=f"blob {blob_id} not found")
        return web.FileResponse(store.path(blob_id), chunk_size=CHUNK_SIZE)

    return [web.put("/blobs/{blob_id}", put_blob), web.get("/blobs/{blob_id}", get_blob)]


def volume_routes(store: LocalBlobStore, volumes) -> list[web.RouteDef]:  # type: ignore[no-untyped-def]
    """Block uploads and ranged content downloads of the Volume v2 protocol."""

    async def put_block(request: web.Request) -> web.Response:
        sha256_hex = request.match_info["sha"]
        query = request.rel_url.query
        if not store.check_signature(sha256_hex, "vput", query.get("expires", ""), query.get("sig", "")):
            raise web.HTTPForbidden(text="invalid or expired block URL")
        if not await volumes.receive_block(sha256_hex, request.content.iter_chunked(CHUNK_SIZE)):
            raise web.HTTPBadRequest(text=f"block content does not match its sha256 {sha256_hex}")
        return web.Response(status=200, body=b"")

    async def get_content(request: web.Request) -> web.StreamResponse:
        sha256_hex = request.match_info["sha"]
        query = request.rel_url.query
        offset, length = int(query.get("offset", "0")), int(query.get("length", "0"))
        key = f"{sha256_hex}:{offset}:{length}"
        if not store.check_signature(key, "vget", query.get("expires", ""), query.get("sig", "")):
            raise web.HTTPForbidden(text="invalid or expired content URL")
        path = volumes.content_path(sha256_hex)
        if not path.exists():
            raise web.HTTPNotFound(text="content not found")
        response = web.StreamResponse(status=200, headers={"Content-Length": str(length)})
        await response.prepare(request)
        with open(path, "rb") as file:
            file.seek(offset)
            remaining = length
            while remaining > 0:
                chunk = file.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                await response.write(chunk)
        await response.write_eof()
        return response

    return [web.put("/volume-blocks/{sha}", put_block), web.get("/volume-content/{sha}", get_content)]

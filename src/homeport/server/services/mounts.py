"""Mounts: sets of files (by sha256) that appear at absolute paths inside containers.

File contents are stored once per sha256 in the blob store. The client's own package
arrives as the global mount `modal-client-mount-<version>`, which Homeport serves from
the client installed beside the server rather than from uploaded files.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time

import sqlalchemy as sa

from homeport import SUPPORTED_CLIENT_VERSION, ids
from homeport.server import errors
from homeport.server.blobstore import LocalBlobStore
from homeport.server.store import db, schema

CLIENT_MOUNT_NAME = f"modal-client-mount-{SUPPORTED_CLIENT_VERSION}"
# Mounts' files kept in memory, at most this many in all (about 0.5 KB each): every
# container start reads its function's mounts, and a mount never changes (rows are only
# inserted, and a file's content id with them), so what was read once holds on every
# replica. A mount may hold 100,000 files, and every `modal run` makes new mounts.
FILES_CACHED = 100_000


class MountService:
    def __init__(self, engine: sa.Engine, blobs: LocalBlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        self._files: collections.OrderedDict[str, tuple[str | None, tuple[dict[str, object], ...]]] = (
            collections.OrderedDict()
        )
        self._files_cached = 0

    def missing(self, hashes: list[str]) -> list[str]:
        c = schema.mount_contents
        with self.engine.connect() as connection:
            present = {
                row.sha256_hex
                for row in connection.execute(sa.select(c.c.sha256_hex).where(c.c.sha256_hex.in_(hashes)))
            }
        return [h for h in hashes if h not in present]

    def put_file(self, sha256_hex: str, data: bytes | None, blob_id: str | None) -> None:
        if blob_id:
            if not self.blobs.exists(blob_id):
                raise errors.not_found(f"blob {blob_id} not found; upload it before MountPutFile")
            content = self.blobs.read_bytes(blob_id)
        else:
            content = data or b""
            blob_id = None
        if hashlib.sha256(content).hexdigest() != sha256_hex:
            raise errors.invalid_argument(f"file content does not match its sha256 {sha256_hex}")
        if blob_id is None:
            blob_id = self.blobs.put_bytes(content)
        db.once_more_on_conflict(lambda: self._record_content(sha256_hex, str(blob_id), len(content)))

    def _record_content(self, sha256_hex: str, blob_id: str, size: int) -> None:
        with self.engine.begin() as connection:
            exists = connection.execute(
                sa.select(schema.mount_contents.c.sha256_hex).where(
                    schema.mount_contents.c.sha256_hex == sha256_hex
                )
            ).first()
            if exists is None:
                connection.execute(
                    schema.mount_contents.insert().values(sha256_hex=sha256_hex, blob_id=blob_id, size=size)
                )

    def create(self, workspace_id: str | None, name: str | None, files: list[dict[str, object]]) -> str:
        missing = self.missing([str(f["sha256"]) for f in files])
        if missing:
            raise errors.failed_precondition(
                f"mount refers to {len(missing)} file(s) that were never uploaded (first: {missing[0]})"
            )
        mount_id = ids.new_id("mount")
        with self.engine.begin() as connection:
            connection.execute(
                schema.mounts.insert().values(
                    id=mount_id,
                    workspace_id=workspace_id,
                    name=name,
                    files=json.dumps(files).encode(),
                    created_at=time.time(),
                )
            )
        return mount_id

    def client_mount_id(self) -> str:
        m = schema.mounts
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.select(m.c.id).where(m.c.name == CLIENT_MOUNT_NAME, m.c.workspace_id.is_(None))
            ).first()
            if row is not None:
                return str(row.id)
            mount_id = ids.new_id("mount")
            connection.execute(
                m.insert().values(
                    id=mount_id,
                    workspace_id=None,
                    name=CLIENT_MOUNT_NAME,
                    files=b"[]",
                    created_at=time.time(),
                )
            )
            return mount_id

    def check_visible(self, workspace_id: str, mount_id: str) -> None:
        """NOT_FOUND unless the mount is the caller workspace's own (or the shared client mount)."""
        m = schema.mounts
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(m.c.workspace_id).where(m.c.id == mount_id)).first()
        if row is None or row.workspace_id not in (None, workspace_id):
            raise errors.not_found(f"mount {mount_id} not found")

    def files(self, mount_id: str) -> tuple[str | None, tuple[dict[str, object], ...]]:
        """(name, files) of a mount; each file is {path, sha256, mode, blob_id}. Shared:
        not to be changed by the caller."""
        cached = self._files.get(mount_id)
        if cached is not None:
            self._files.move_to_end(mount_id)
            return cached
        m, c = schema.mounts, schema.mount_contents
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(m.c.name, m.c.files).where(m.c.id == mount_id)).first()
            if row is None:
                raise errors.not_found(f"mount {mount_id} not found")
            files = json.loads(row.files)
            hashes = [f["sha256"] for f in files]
            blob_ids = {
                r.sha256_hex: r.blob_id
                for r in connection.execute(
                    sa.select(c.c.sha256_hex, c.c.blob_id).where(c.c.sha256_hex.in_(hashes))
                )
            }
        for f in files:
            f["blob_id"] = blob_ids[f["sha256"]]
        found = (row.name, tuple(files))
        if len(files) <= FILES_CACHED // 4 and mount_id not in self._files:  # (read twice at once)
            self._files[mount_id] = found
            self._files_cached += len(files)
            while self._files_cached > FILES_CACHED:
                _, (_, evicted) = self._files.popitem(last=False)  # the least recently used
                self._files_cached -= len(evicted)
        return found

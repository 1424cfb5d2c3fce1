"""Volumes: a committed file tree per volume (rows in `volume_files`, contents in a
content-addressed store). Containers' working copies are their node's (agent/volume_copy.py).

Client 1.6.4 speaks the v2 block protocol for uploads and downloads (8 MiB blocks,
addressed by sha256). A container sees the volume as a real directory: a working copy
made when it starts. `commit()` stores what changed in that copy (each file written to
the store whole, then swapped in by one database transaction: a reader sees the old file
or the new one, never a torn one; the last commit wins per file). `reload()` commits the
container's own changes first, then brings the copy up to the latest committed state.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport.agent.volume_copy import Entry, read_file, store_in
from homeport.config import DataLayout
from homeport.objectstore import LocalCopies
from homeport.server import errors
from homeport.server.services.storage import StorageObject
from homeport.server.store import db, schema

BLOCK_SIZE = 8 * 1024 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
COPY_CHUNK = 1024 * 1024
v = schema.volume_files


def normalize(path: str) -> str:
    """Volume paths are relative, without "." or ".." parts: "/a//b/" -> "a/b"."""
    parts = [part for part in PurePosixPath("/" + path).parts[1:] if part not in ("", ".")]
    if ".." in parts:
        raise errors.invalid_argument(f"volume path {path!r} may not contain '..'")
    return "/".join(parts)


def parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def volume_metadata(found: StorageObject) -> api_pb2.VolumeMetadata:
    """What the client (and a container's app layout) is told about a volume: always v2."""
    return api_pb2.VolumeMetadata(
        version=api_pb2.VOLUME_FS_VERSION_V2,
        name=found.name or "",
        creation_info=api_pb2.CreationInfo(created_at=found.created_at),
    )


def remove_contents(connection: sa.Connection, volume_id: str) -> None:
    connection.execute(v.delete().where(v.c.volume_id == volume_id))


class VolumeService:
    def __init__(self, engine: sa.Engine, layout: DataLayout, shared: LocalCopies | None = None) -> None:
        self.engine = engine
        self.layout = layout
        self.contents = VolumeContents(layout, shared)

    # --- the committed tree ------------------------------------------------------------

    def entries(self, volume_id: str) -> dict[str, Entry]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(v.c.path, v.c.is_dir, v.c.size, v.c.mode, v.c.mtime, v.c.sha256).where(
                    v.c.volume_id == volume_id
                )
            ).all()
        return {row.path: Entry(*row) for row in rows}

    def entry(self, volume_id: str, path: str) -> Entry | None:
        path = normalize(path)
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(v.c.path, v.c.is_dir, v.c.size, v.c.mode, v.c.mtime, v.c.sha256).where(
                    v.c.volume_id == volume_id, v.c.path == path
                )
            ).first()
        return Entry(*row) if row else None

    def list(self, volume_id: str, path: str, recursive: bool) -> list[Entry]:
        path = normalize(path)
        entries = self.entries(volume_id)
        if path and path in entries and not entries[path].is_dir:
            return [entries[path]]
        if path and path not in entries:
            raise errors.not_found(f"no file or directory '{path}' in the volume")
        prefix = path + "/" if path else ""
        found = []
        for entry in entries.values():
            if not entry.path.startswith(prefix) or entry.path == path:
                continue
            if recursive or "/" not in entry.path[len(prefix) :]:
                found.append(entry)
        return sorted(found, key=lambda e: e.path)

    def _upsert(self, connection: sa.Connection, volume_id: str, entry: Entry) -> None:
        for parent in parents(entry.path):
            self._ensure_dir(connection, volume_id, parent, entry.mtime)
        connection.execute(v.delete().where(v.c.volume_id == volume_id, v.c.path == entry.path))
        connection.execute(
            v.insert().values(
                volume_id=volume_id,
                path=entry.path,
                is_dir=entry.is_dir,
                size=entry.size,
                mode=entry.mode,
                mtime=entry.mtime,
                sha256=entry.sha256,
            )
        )

    def _ensure_dir(self, connection: sa.Connection, volume_id: str, path: str, mtime: float) -> None:
        existing = connection.execute(
            sa.select(v.c.is_dir).where(v.c.volume_id == volume_id, v.c.path == path)
        ).first()
        if existing is None:
            connection.execute(
                v.insert().values(
                    volume_id=volume_id, path=path, is_dir=True, size=0, mode=0o755, mtime=mtime
                )
            )
        elif not existing.is_dir:
            raise errors.already_exists(f"'{path}' is a file in the volume, not a directory")

    def remove(self, volume_id: str, path: str, recursive: bool) -> None:
        path = normalize(path)
        if not path:
            if not recursive:
                raise errors.invalid_argument(
                    "removing the volume root needs recursive=True (`modal volume rm -r`)"
                )
        with self.engine.begin() as connection:
            if path:
                row = connection.execute(
                    sa.select(v.c.is_dir).where(v.c.volume_id == volume_id, v.c.path == path)
                ).first()
                if row is None:
                    raise errors.not_found(f"no file or directory '{path}' in the volume")
                children = v.c.path.startswith(path + "/", autoescape=True)
                if row.is_dir and not recursive:
                    has_children = connection.execute(
                        sa.select(v.c.path).where(v.c.volume_id == volume_id, children).limit(1)
                    ).first()
                    if has_children is not None:
                        raise errors.failed_precondition(
                            f"'{path}' is a directory that is not empty; remove it with recursive=True (`rm -r`)"
                        )
                connection.execute(
                    v.delete().where(v.c.volume_id == volume_id, sa.or_(v.c.path == path, children))
                )
            else:
                connection.execute(v.delete().where(v.c.volume_id == volume_id))

    def copy(self, volume_id: str, sources: builtins.list[str], destination: str, recursive: bool) -> None:
        entries = self.entries(volume_id)
        destination = normalize(destination)
        into_directory = len(sources) > 1 or (destination in entries and entries[destination].is_dir)
        now = time.time()
        with self.engine.begin() as connection:
            for source in map(normalize, sources):
                if source not in entries:
                    raise errors.not_found(f"no file or directory '{source}' in the volume")
                base = (
                    f"{destination}/{PurePosixPath(source).name}".lstrip("/")
                    if into_directory
                    else destination
                )
                if entries[source].is_dir and not recursive:
                    raise errors.invalid_argument(
                        f"'{source}' is a directory; copy it with recursive=True (`cp -r`)"
                    )
                for entry in [
                    entries[source],
                    *(e for e in entries.values() if e.path.startswith(source + "/")),
                ]:
                    target = base + entry.path[len(source) :]
                    self._upsert(connection, volume_id, dataclasses.replace(entry, path=target, mtime=now))

    # --- contents ------------------------------------------------------------------------

    def content_path(self, sha256_hex: str) -> Path:
        return self.contents.path(sha256_hex)

    def block_path(self, sha256_hex: str) -> Path:
        return self.layout.volume_block(sha256_hex)

    async def put_files(
        self,
        volume_id: str,
        files: builtins.list[tuple[str, int, int, builtins.list[str]]],
        disallow_overwrite: bool,
    ) -> builtins.list[tuple[int, int]]:
        """The v2 upload: each file is (path, size, mode, block sha256s). Returns the
        (file index, block index) pairs still missing; once none are, writes the files
        (their contents assembled and stored on a thread, the entries here)."""
        missing = [
            (file_index, block_index)
            for file_index, (_, _, _, blocks) in enumerate(files)
            for block_index, block in enumerate(blocks)
            if block != EMPTY_SHA256 and not self.block_path(block).exists()
        ]
        if missing:
            return missing
        existing = self.entries(volume_id)
        for path, _, _, _ in files:
            path = normalize(path)
            if not path:
                raise errors.invalid_argument("a file needs a path inside the volume")
            if path in existing and existing[path].is_dir:
                raise errors.already_exists(f"'{path}' is a directory in the volume")
            if disallow_overwrite and path in existing:
                raise errors.already_exists(
                    f"'{path}' already exists in the volume; use --force to overwrite it"
                )
        written = await asyncio.to_thread(self._store_files, files)
        self.record(volume_id, written, [])
        return []

    def _store_files(
        self, files: builtins.list[tuple[str, int, int, builtins.list[str]]]
    ) -> builtins.list[Entry]:
        written: list[Entry] = []
        for path, size, mode, blocks in files:
            sha256_hex, stored = self.contents.store(self._assemble(blocks, size))
            written.append(Entry(normalize(path), False, stored, mode or 0o644, time.time(), sha256_hex))
        return written

    def _assemble(self, blocks: builtins.list[str], size: int) -> Iterator[bytes]:
        for index, block in enumerate(blocks):
            expected = min(BLOCK_SIZE, size - index * BLOCK_SIZE)
            produced = 0
            if block != EMPTY_SHA256:
                for chunk in read_file(self.block_path(block)):
                    produced += len(chunk)
                    yield chunk
            if produced < expected:  # the client trims trailing zero bytes of a block
                yield bytes(expected - produced)

    async def receive_block(self, sha256_hex: str, chunks: AsyncIterator[bytes]) -> bool:
        """Stream an uploaded block to disk; keep it if its content matches its name.
        (Clients upload many blocks at once: none is held in memory whole.)"""
        digest = hashlib.sha256()
        temporary = self.layout.volume_blocks / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
        try:
            with open(temporary, "wb") as file:
                async for chunk in chunks:
                    digest.update(chunk)
                    file.write(chunk)
            if digest.hexdigest() != sha256_hex:
                return False
            final = self.block_path(sha256_hex)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, final)
            return True
        finally:
            temporary.unlink(missing_ok=True)

    # --- what containers commit ----------------------------------------------------------------

    def record(self, volume_id: str, changed: builtins.list[Entry], removed: builtins.list[str]) -> None:
        """A container's commit, its contents already stored: swapped in by one transaction."""
        db.once_more_on_conflict(lambda: self._record(volume_id, changed, removed))

    def _record(self, volume_id: str, changed: builtins.list[Entry], removed: builtins.list[str]) -> None:
        with self.engine.begin() as connection:
            for entry in changed:
                self._upsert(connection, volume_id, entry)
            for path in removed:
                connection.execute(v.delete().where(v.c.volume_id == volume_id, v.c.path == path))


class VolumeContents:
    """File contents by sha256 under the data dir; in a cluster also in the object store
    (written through, and fetched from there when another machine stored them)."""

    def __init__(self, layout: DataLayout, shared: LocalCopies | None = None) -> None:
        self.layout = layout
        self.shared = shared

    def path(self, sha256_hex: str) -> Path:
        local = self.layout.volume_file(sha256_hex)
        if self.shared is not None and not local.exists():
            self.shared.fetch(content_key(sha256_hex), local)
        return local

    def store(self, chunks: Iterator[bytes]) -> tuple[str, int]:
        sha256_hex, size = store_in(self.layout.volume_content, chunks, self.layout.volume_file)
        if self.shared is not None:
            self.shared.store.upload(content_key(sha256_hex), self.layout.volume_file(sha256_hex))
        return sha256_hex, size


def content_key(sha256_hex: str) -> str:
    """A volume file's key in the object store."""
    return f"volumes/{sha256_hex}"

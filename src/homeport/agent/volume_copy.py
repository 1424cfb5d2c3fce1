"""A container's working copy of a volume, on the node that runs it.

The committed tree lives in the control plane's database (entries) and the content store
(file contents by sha256); a container sees a real directory made from it when it starts.
`commit` finds what changed in the copy and stores those contents, returning the changes
for the control plane to record; `refresh` brings the copy up to a committed state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

COPY_CHUNK = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str
    is_dir: bool
    size: int
    mode: int
    mtime: float
    sha256: str | None


# What a working copy looked like when last synced: path -> (is_dir, size, mtime_ns, sha256)
Snapshot = dict[str, tuple[bool, int, int, str | None]]


class Contents(Protocol):
    """Where file contents live, by sha256."""

    def path(self, sha256_hex: str) -> Path:
        """A local file holding this content (fetched first if need be)."""
        ...

    def store(self, chunks: Iterator[bytes]) -> tuple[str, int]:
        """Keep a stream's content: (sha256, size)."""
        ...


def read_file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(COPY_CHUNK):
            yield chunk


def store_in(directory: Path, chunks: Iterator[bytes], final_path) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """Write a stream under `directory` (temp file, fsync, rename to final_path(sha256))."""
    digest = hashlib.sha256()
    size = 0
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(temporary, "wb") as file:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        final = final_path(digest.hexdigest())
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    return digest.hexdigest(), size


def materialize(entries: list[Entry], directory: Path, contents: Contents) -> Snapshot:
    directory.mkdir(parents=True, exist_ok=True)
    for entry in sorted(entries, key=lambda e: e.path):
        place(entry, directory, contents)
    return scan(directory)


def place(entry: Entry, directory: Path, contents: Contents) -> None:
    target = directory / entry.path
    if entry.is_dir:
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".homeport-{target.name}.{time.monotonic_ns()}"
    if entry.sha256:
        shutil.copyfile(contents.path(entry.sha256), temporary)
    else:
        temporary.touch()
    os.chmod(temporary, entry.mode & 0o7777)
    os.utime(temporary, (entry.mtime, entry.mtime))
    os.replace(temporary, target)


def commit(directory: Path, base: Snapshot, contents: Contents) -> tuple[Snapshot, list[Entry], list[str]]:
    """What changed in a working copy since `base`, its contents stored: (the new snapshot,
    changed entries, removed paths)."""
    current = scan(directory)
    changed: list[Entry] = []
    for path, (is_dir, size, mtime_ns, _) in current.items():
        before = base.get(path)
        if before is not None and before[:3] == (is_dir, size, mtime_ns):
            current[path] = before
            continue
        mode = stat.S_IMODE((directory / path).lstat().st_mode)
        if is_dir:
            changed.append(Entry(path, True, 0, mode, mtime_ns / 1e9, None))
            continue
        sha256_hex, stored = contents.store(read_file(directory / path))
        current[path] = (False, stored, mtime_ns, sha256_hex)
        changed.append(Entry(path, False, stored, mode, mtime_ns / 1e9, sha256_hex))
    removed = [path for path in base if path not in current]
    return current, changed, removed


def refresh(directory: Path, mine: Snapshot, committed: dict[str, Entry], contents: Contents) -> Snapshot:
    """Show the latest committed state in a copy whose own changes (`mine`) are committed."""
    for path in sorted(set(mine) - set(committed), reverse=True):
        target = directory / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    for entry in sorted(committed.values(), key=lambda e: e.path):
        held = mine.get(entry.path)
        if held is None or held[0] != entry.is_dir or (not entry.is_dir and held[3] != entry.sha256):
            place(entry, directory, contents)
    return scan(directory, known=dict(mine))


def scan(directory: Path, known: Snapshot | None = None) -> Snapshot:
    """Walk a working copy: path -> (is_dir, size, mtime_ns, sha256 if known)."""
    snapshot: Snapshot = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            full = Path(root) / name
            info = full.lstat()
            if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                continue  # symlinks, sockets and fifos are not kept in a volume
            relative = full.relative_to(directory).as_posix()
            is_dir = stat.S_ISDIR(info.st_mode)
            size = 0 if is_dir else info.st_size
            previous = (known or {}).get(relative)
            sha = previous[3] if previous and previous[:3] == (is_dir, size, info.st_mtime_ns) else None
            snapshot[relative] = (is_dir, size, info.st_mtime_ns, sha)
    return snapshot


@dataclasses.dataclass
class VolumeView:
    """A container's working copy of a volume, and what it looked like when last synced."""

    directory: Path
    read_only: bool
    base: Snapshot
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

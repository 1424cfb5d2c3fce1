"""A node's memory snapshots on disk (agent/memory_snapshots.py takes and restores them):
one directory per function version's key, written whole and then renamed into place, the
most recently used kept. In cluster mode they are shared through the object store, so a
node restores a snapshot another node of its kind took (the same processor model and
features: see `node_kind`)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from homeport.agent.assets import pack, unpack
from homeport.objectstore import ObjectStore

log = logging.getLogger("homeport.snapshots")

KEY = re.compile(r"^[0-9a-f]{16,64}$")
SHARED_PREFIX = "memory-snapshots/"


class SnapshotError(Exception):
    """Taking or restoring a snapshot failed; the container starts or goes on without."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    key: str
    directory: Path
    root_pid: int  # the entrypoint's PID in its container
    last_pid: int  # the highest PID (threads included) of the dumped tree
    pipes: dict[str, int]  # the dumped tree's output pipes ("pipe:[inode]") -> 1 or 2
    size_bytes: int
    took_ms: float

    @property
    def images(self) -> Path:
        return self.directory / "images"

    @property
    def layer(self) -> Path:
        return self.directory / "fs"


@functools.cache
def node_kind() -> str:
    """Nodes whose snapshots restore on each other: the same processor model and features
    (a restored process keeps the instructions its libraries chose at import) and kernel
    architecture. CRIU compares only the FPU's state itself."""
    first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    described = "|".join(
        [os.uname().machine, fields.get("model name", "").strip(), fields.get("flags", "").strip()]
    )
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def shared_key(key: str) -> str:
    return f"{SHARED_PREFIX}{node_kind()}/{key}.tar"


def size_of(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and not f.is_symlink())


class SnapshotStore:
    """This node's snapshots, one directory per key (written whole, then renamed in); the
    `keep` most recently used are kept (HOMEPORT_MEMORY_SNAPSHOTS_KEPT)."""

    def __init__(self, directory: Path, keep: int | None = None, shared: ObjectStore | None = None) -> None:
        self.directory = directory
        self.keep = keep or int(os.environ.get("HOMEPORT_MEMORY_SNAPSHOTS_KEPT", "32"))
        self.shared = shared  # cluster mode: the object store every node shares
        # Snapshots restored containers run on (their copied layer is those containers'
        # lower layer): one dropped meanwhile is moved aside, removed when none uses it.
        self._guard = threading.Lock()
        self._in_use: collections.Counter[str] = collections.Counter()
        self._dropped: dict[str, list[Path]] = {}
        for unfinished in directory.glob(".*-*"):  # work the node did not live to finish
            shutil.rmtree(unfinished, ignore_errors=True)

    def acquire(self, key: str) -> None:
        with self._guard:
            self._in_use[key] += 1

    def release(self, key: str) -> None:
        with self._guard:
            self._in_use[key] -= 1
            if self._in_use[key] > 0:
                return
            del self._in_use[key]
            dropped = self._dropped.pop(key, [])
        for directory in dropped:
            shutil.rmtree(directory, ignore_errors=True)

    def find(self, key: str) -> Snapshot | None:
        if not KEY.match(key):
            return None
        directory = self.directory / key
        try:
            meta = json.loads((directory / "meta.json").read_text())
            os.utime(directory / "meta.json")  # used now (see `_prune`)
            return Snapshot(
                key,
                directory,
                meta["root_pid"],
                meta["last_pid"],
                meta["pipes"],
                meta["size_bytes"],
                meta["took_ms"],
            )
        except (OSError, ValueError, KeyError):
            return None

    def discard(self, key: str) -> None:
        if KEY.match(key):
            self._drop(self.directory / key)

    def _drop(self, directory: Path) -> None:
        """Remove a snapshot's directory now, or once no container runs on it."""
        aside = self.directory / f".dropped-{directory.name}-{time.monotonic_ns()}"
        with self._guard:
            try:
                directory.rename(aside)
            except OSError:
                return  # gone already
            if self._in_use[directory.name] > 0:
                self._dropped.setdefault(directory.name, []).append(aside)
                return
        shutil.rmtree(aside, ignore_errors=True)

    def staging(self, task_id: str) -> Path:
        # Only root reads them: a snapshot holds a process's memory, its secrets included.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        staging = self.directory / f".taking-{task_id}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "images").mkdir(parents=True)
        (staging / "fs").mkdir()
        return staging

    def publish(self, staging: Path, key: str, meta: dict[str, object]) -> Snapshot:
        (staging / "meta.json").write_text(json.dumps(meta))
        try:
            staging.rename(self.directory / key)
        except OSError:  # another container of this version published one first: keep that
            shutil.rmtree(staging, ignore_errors=True)
        snapshot = self.find(key)
        if snapshot is None:
            raise SnapshotError(f"snapshot {key} could not be stored")
        self._prune()
        return snapshot

    async def fetch(self, key: str) -> Snapshot | None:
        """`find`, or else (cluster mode) the copy another node shared."""
        found = self.find(key)
        if found is not None or self.shared is None or not KEY.match(key):
            return found
        return await asyncio.to_thread(self._download, key)

    async def share(self, snapshot: Snapshot) -> None:
        """Cluster mode: make a snapshot this node took restorable on the others."""
        if self.shared is not None:
            await asyncio.to_thread(self._upload, snapshot)

    def _download(self, key: str) -> Snapshot | None:
        assert self.shared is not None
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetching-", dir=self.directory))
        archive = staging / "snapshot.tar"
        try:
            if not self.shared.download(shared_key(key), archive):
                return None
            unpack(archive, staging / "snapshot")  # as layers are (whiteouts, xattrs kept)
            meta = json.loads((staging / "snapshot" / "meta.json").read_text())
            snapshot = self.publish(staging / "snapshot", key, meta)
            log.info("memory snapshot %s fetched from the object store", key)
            return snapshot
        except Exception as error:  # the container starts the ordinary way
            log.warning("memory snapshot %s could not be fetched from the object store: %s", key, error)
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _upload(self, snapshot: Snapshot) -> None:
        assert self.shared is not None
        staging = Path(tempfile.mkdtemp(prefix=".sharing-", dir=self.directory))
        try:
            archive = staging / "snapshot.tar"
            pack(snapshot.directory, archive)
            self.shared.upload(shared_key(snapshot.key), archive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _prune(self) -> None:
        """Past `keep` snapshots, the least recently used go."""
        kept = [d for d in self.directory.iterdir() if KEY.match(d.name) and (d / "meta.json").exists()]
        kept.sort(key=lambda d: (d / "meta.json").stat().st_mtime, reverse=True)
        for directory in kept[self.keep :]:
            self._drop(directory)

"""The small pieces of memory snapshots: which function version a snapshot belongs to, the
restore state a container is given, and the node's snapshot store."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from modal_proto import api_pb2

from homeport.agent.memory_snapshots import _own_state, _write_state
from homeport.agent.order import FileRef
from homeport.agent.runtime import ContainerSpec
from homeport.agent.snapshot_store import SnapshotStore
from homeport.server.orders import snapshot_key


@dataclasses.dataclass
class _Function:
    id: str = "fu-1"
    app_id: str = "ap-1"


def _key(**changes: object) -> str:
    definition = api_pb2.Function(function_name="Model.*", module_name="app", checkpointing_enabled=True)
    definition.mount_ids.append(str(changes.pop("mount_id", "mo-1")))
    arguments: dict[str, object] = {
        "workspace_id": "ws-1",
        "function": _Function(),
        "definition": definition,
        "params": b"",
        "environment_name": "main",
        "chain": ["layer-a", "layer-b"],
        "files": [FileRef("/root/app.py", "bl-1", 0o644)],
        "secret_values": {"TOKEN": "one"},
    }
    arguments.update(changes)
    return snapshot_key(**arguments)  # type: ignore[arg-type]


def test_a_snapshot_belongs_to_one_function_version() -> None:
    same = _key()
    assert _key() == same
    assert _key(mount_id="mo-2") == same  # a new upload of unchanged files: the same code
    assert _key(files=[FileRef("/root/app.py", "bl-2", 0o644)]) != same  # new code
    assert _key(chain=["layer-a", "layer-c"]) != same  # a new image
    assert _key(params=b"\x01") != same  # another instance of a parametrised class
    assert _key(secret_values={"TOKEN": "two"}) != same  # never a restored old secret
    assert _key(function=_Function(app_id="ap-2")) != same  # restored ids are kept
    assert _key(workspace_id="ws-2") != same


def test_the_restore_state_gives_a_container_its_own_identity(tmp_path: Path) -> None:
    spec = ContainerSpec(
        task_id="ta-2",
        app_id="ap-1",
        function_id="fu-1",
        container_arguments=b"",
        environment={"MODAL_TASK_ID": "ta-2", "TOKEN": "secret", "lower_case": "x"},
        files=[],
        client_package_dir=None,
        work_dir=tmp_path,
        image_layers=[],
    )
    state = _own_state(spec)
    # Client 1.6.4 upper-cases every key that is no client setting: a lower-case name would
    # arrive renamed, so it is left as it was at the snapshot.
    assert state == {"MODAL_TASK_ID": "ta-2", "TOKEN": "secret", "task_id": "ta-2", "function_id": "fu-1"}
    _write_state(tmp_path, state)
    assert json.loads((tmp_path / "restore-state.json").read_text()) == state
    assert [p.name for p in tmp_path.iterdir()] == ["restore-state.json"]


def test_the_store_keeps_the_first_snapshot_of_a_version(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    key = "ab" * 20
    meta = {"root_pid": 2, "last_pid": 9, "pipes": {"pipe:[1]": 1}, "size_bytes": 10, "took_ms": 5.0}
    first = store.publish(store.staging("ta-1"), key, meta)
    assert first.root_pid == 2 and first.images.is_dir() and first.layer.is_dir()
    second = store.publish(store.staging("ta-2"), key, {**meta, "root_pid": 3})
    assert second.root_pid == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [key]  # the second's staging is gone
    assert store.find("../" + key) is None  # keys are hex, never paths
    store.discard(key)
    assert store.find(key) is None


def test_the_store_keeps_the_most_recently_used(tmp_path: Path) -> None:
    import os
    import time

    store = SnapshotStore(tmp_path, keep=3)
    meta = {"root_pid": 2, "last_pid": 9, "pipes": {}, "size_bytes": 10, "took_ms": 5.0}
    keys = [f"{n:040x}" for n in range(3)]
    for age, key in zip((30, 20, 10), keys, strict=True):
        store.publish(store.staging(key), key, meta)
        os.utime(tmp_path / key / "meta.json", (time.time() - age, time.time() - age))
    store.find(keys[0])  # used just now: kept
    store.keep = 2
    store.publish(store.staging("new"), "f" * 40, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([keys[0], "f" * 40])


class _DirectoryStore:
    """An object store in a directory: the interface SnapshotStore uses (upload, download)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def upload(self, key: str, path: Path) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())

    def download(self, key: str, path: Path) -> bool:
        if not (self.root / key).exists():
            return False
        path.write_bytes((self.root / key).read_bytes())
        return True


def test_a_shared_snapshot_arrives_whole_on_another_node(tmp_path: Path) -> None:
    import asyncio
    import os

    shared = _DirectoryStore(tmp_path / "bucket")
    taker = SnapshotStore(tmp_path / "node-a", shared=shared)  # type: ignore[arg-type]
    other = SnapshotStore(tmp_path / "node-b", shared=shared)  # type: ignore[arg-type]
    key = "cd" * 20
    staging = taker.staging("ta-1")
    (staging / "images" / "pages-1.img").write_bytes(b"\x00" * 4096 + b"pages")
    (staging / "fs" / "root").mkdir()
    (staging / "fs" / "root" / "loaded.txt").write_text("token")
    os.mknod(staging / "fs" / "deleted", 0o600 | 0o020000, os.makedev(0, 0))  # an overlayfs whiteout
    (staging / "fs" / "opaque").mkdir()
    os.setxattr(staging / "fs" / "opaque", "trusted.overlay.opaque", b"y")
    meta = {"root_pid": 2, "last_pid": 9, "pipes": {"pipe:[7]": 1}, "size_bytes": 10, "took_ms": 5.0}
    snapshot = taker.publish(staging, key, meta)
    assert asyncio.run(other.fetch(key)) is None  # not shared yet
    asyncio.run(taker.share(snapshot))

    fetched = asyncio.run(other.fetch(key))
    assert fetched is not None and fetched.pipes == {"pipe:[7]": 1}
    assert (fetched.images / "pages-1.img").read_bytes() == b"\x00" * 4096 + b"pages"
    assert (fetched.layer / "root" / "loaded.txt").read_text() == "token"
    whiteout = os.stat(fetched.layer / "deleted", follow_symlinks=False)
    assert (
        os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0 and (whiteout.st_mode & 0o020000)
    )
    assert os.getxattr(fetched.layer / "opaque", "trusted.overlay.opaque") == b"y"
    assert sorted(p.name for p in (tmp_path / "node-b").iterdir()) == [key]  # no staging left

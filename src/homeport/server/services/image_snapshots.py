"""Images made from a running sandbox's filesystem (`Sandbox.snapshot_filesystem()`).

The sandbox's writable layer (everything it changed in its image, deletions included as
overlay whiteouts) is copied as it is at that moment and becomes one more layer on top of
the sandbox's image: the new image is that chain, with the same config. It is a built image
like any other, so `image=` takes it for new sandboxes and functions, and images can be
built FROM it. Client 1.6.4 names each snapshot (`snapshot_id`, a fresh UUID per call, the
same on a retry), so a retried request answers the image the first one made.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport import ids
from homeport.agent.host_python import ROOT as SANDBOX_TOOLS_DIR
from homeport.agent.runtime import CONTROL_DIR
from homeport.images.config import ImageConfig
from homeport.images.layers import LayerStore
from homeport.server.nodes import Node
from homeport.server.notify import Notifier
from homeport.server.store import schema

log = logging.getLogger("homeport.images")
SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS


class FilesystemSnapshots:
    def __init__(self, engine: sa.Engine, layers: LayerStore, notifier: Notifier) -> None:
        self.engine = engine
        self.layers = layers
        self.notifier = notifier
        self._locks: dict[str, asyncio.Lock] = {}  # a retry waits for the first attempt

    async def take(
        self,
        workspace_id: str,
        node: Node,
        task_id: str,
        chain: list[str],
        config: ImageConfig,
        snapshot_id: str,
    ) -> str:
        """Snapshot the container `task_id` (running on `node`, of the image `chain` with
        `config`) into a new image; returns its id."""
        key = hashlib.sha256(f"filesystem-snapshot\0{task_id}\0{snapshot_id}".encode()).hexdigest()
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                existing = self._image_with_key(workspace_id, key)
                if existing is not None:
                    return existing
                return await self._take(workspace_id, node, task_id, chain, config, key)
        finally:
            if not lock.locked():
                self._locks.pop(key, None)

    async def _take(
        self, workspace_id: str, node: Node, task_id: str, chain: list[str], config: ImageConfig, key: str
    ) -> str:
        started = time.monotonic()
        staging = self.layers.staging(key)
        try:
            await node.copy_writable_layer(task_id, staging / "fs")
            for runtime_dir in (SANDBOX_TOOLS_DIR, CONTROL_DIR):  # bound in by the node, not the sandbox's
                shutil.rmtree(staging / "fs" / runtime_dir.lstrip("/"), ignore_errors=True)
            layer = await asyncio.to_thread(
                self.layers.commit, key, staging, f"snapshot of sandbox task {task_id}", config.copy()
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        image_id = ids.new_id("image")
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(
                schema.images.insert().values(
                    id=image_id,
                    workspace_id=workspace_id,
                    content_hash=key,
                    definition=b"",
                    status=SUCCESS,
                    exception="",
                    created_at=now,
                    layers=json.dumps([*chain, layer.ref]),
                    config=json.dumps(config.to_json()),
                    top_key=key,
                    built_at=now,
                    build_seconds=time.monotonic() - started,
                )
            )
        self.notifier.notify(f"image:{image_id}")
        log.info(
            "image %s: a snapshot of sandbox task %s (%d bytes changed, %.0f ms)",
            image_id, task_id, layer.size, (time.monotonic() - started) * 1000,
        )  # fmt: skip
        return image_id

    def _image_with_key(self, workspace_id: str, key: str) -> str | None:
        i = schema.images
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(i.c.id).where(i.c.workspace_id == workspace_id, i.c.content_hash == key)
            ).scalar()

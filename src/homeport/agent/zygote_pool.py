"""The zygotes of one node: one per (workspace, image, client package), started ahead of
need or on first use, stopped when idle (see agent/zygote.py for what a zygote is)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from homeport.agent.network import BridgeNetwork
from homeport.agent.zygote import Zygote, remove_zygote_directory
from homeport.agent.zygote_image import ZygoteImage

log = logging.getLogger("homeport.zygote")

# A zygote no container has used for this long is stopped (it holds ~40 MiB).
IDLE_S = 600.0
MAX_ZYGOTES = 16
RETRY_S = 60.0  # after a zygote failed or died, before another is tried for that image


class ZygotePool:
    """The zygotes of this node: started ahead of need (prewarm) or on first use (the
    container waits for it), stopped when idle. A container whose image's zygote failed
    lately starts the ordinary way."""

    def __init__(self, root: Path, network: BridgeNetwork | None = None) -> None:
        self.root = root
        self.network = network  # the node's bridge: zygotes network their spares on it
        self.zygotes: dict[ZygoteImage, Zygote] = {}
        self._starting: dict[ZygoteImage, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._counter = 0
        self._sweep_leftovers()
        os.chmod(self.root, 0o700)  # zygote roots hold image files (setuid binaries included)

    def _sweep_leftovers(self) -> None:
        """Directories (and, from a server that ran without a mount namespace of its own,
        mounts) of zygotes from a previous run of this server."""
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in self.root.iterdir():
            remove_zygote_directory(directory)

    async def get(self, image: ZygoteImage) -> Zygote | None:
        """The zygote for this image, started (and waited for) if need be; None when one
        failed lately (containers then start the ordinary way for RETRY_S)."""
        zygote = self.zygotes.get(image)
        if zygote is not None and image not in self._starting and not zygote.alive:
            if time.monotonic() - zygote.last_used < RETRY_S:
                return None
            self._forget(image)
            zygote = None
        if zygote is None:
            self.prewarm(image)
            zygote = self.zygotes.get(image)
            if zygote is None:
                return None  # no room for another zygote
        try:
            await asyncio.shield(zygote.ready)
        except Exception:
            return None
        return zygote if zygote.alive else None

    def prewarm(self, image: ZygoteImage) -> None:
        if image in self.zygotes or image in self._starting:
            return
        running = sum(1 for known, z in self.zygotes.items() if z.alive or known in self._starting)
        if running >= MAX_ZYGOTES and not self._evict_one():
            return
        self._counter += 1
        zygote = Zygote(image, self.root / f"z{os.getpid()}-{self._counter}", self.network)
        self.zygotes[image] = zygote
        self._starting[image] = asyncio.create_task(self._start(image, zygote))

    async def _start(self, image: ZygoteImage, zygote: Zygote) -> None:
        try:
            await zygote.start()
        except Exception as error:
            log.warning("zygote for %s not started: %s", image.layers[:1], error or type(error).__name__)
            await zygote.stop()  # kept, not alive: the image is not tried again for RETRY_S
        finally:
            self._starting.pop(image, None)

    def _forget(self, image: ZygoteImage) -> None:
        zygote = self.zygotes.pop(image, None)
        if zygote is not None:
            stopping = asyncio.get_running_loop().create_task(zygote.stop())
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)

    def _evict_one(self) -> bool:
        # Dead ones are not evicted: their entry keeps their back-off (see get).
        idle = [
            (z.last_used, image)
            for image, z in self.zygotes.items()
            if z.alive and z.containers == 0 and image not in self._starting
        ]
        if not idle:
            return False
        self._forget(min(idle)[1])
        return True

    def sweep(self) -> None:
        """Stop zygotes nobody used for IDLE_S."""
        now = time.monotonic()
        for image, zygote in list(self.zygotes.items()):
            if image not in self._starting and zygote.containers == 0 and now - zygote.last_used > IDLE_S:
                self._forget(image)

    async def shutdown(self) -> None:
        for task in list(self._starting.values()):
            task.cancel()
        await asyncio.gather(*(z.stop() for z in self.zygotes.values()), return_exceptions=True)
        self.zygotes.clear()

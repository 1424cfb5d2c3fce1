"""Wake-ups for long-polls: "something changed under this key, look again".

A notification is only a hint; the database stays the source of truth, so a waiter
always re-reads it and every wait has a deadline. Listen *before* reading the
database, so a change between the read and the wait is not missed. On a single server
the hints are in-process; a multi-node deployment would carry the same keys over
PostgreSQL LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator


class Listener:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """Wait for a notification (or one that already came); clears it. True if notified."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout=max(timeout, 0))
        except TimeoutError:
            return False
        self._event.clear()
        return True


class Notifier:
    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = defaultdict(set)

    def notify(self, key: str, limit: int | None = None) -> None:
        """Wake the listeners of `key`; with `limit`, at most that many (one queued input
        needs one container, not a stampede of every idle one)."""
        woken = 0
        for listener in self._listeners.get(key, ()):
            if limit is not None and woken >= limit:
                return
            if not listener._event.is_set():
                listener._event.set()
                woken += 1

    @contextlib.contextmanager
    def listen(self, *keys: str) -> Iterator[Listener]:
        listener = Listener()
        for key in keys:
            self._listeners[key].add(listener)
        try:
            yield listener
        finally:
            for key in keys:
                listeners = self._listeners.get(key)
                if listeners is not None:
                    listeners.discard(listener)
                    if not listeners:
                        del self._listeners[key]


async def poll(notifier: Notifier, keys: list[str], fetch, timeout: float):  # type: ignore[no-untyped-def]
    """Call `fetch()` until it returns something truthy or `timeout` passes, waking on
    notifications of `keys` rather than on a tick. Returns the last result."""
    deadline = asyncio.get_running_loop().time() + max(timeout, 0.0)
    while True:
        with notifier.listen(*keys) as listener:
            result = fetch()
            remaining = deadline - asyncio.get_running_loop().time()
            if result or remaining <= 0:
                return result
            await listener.wait(remaining)

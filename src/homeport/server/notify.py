"""Wake-ups for long-polls: "something changed under this key, look again".

A notification is only a hint; the database stays the source of truth, so a waiter
always re-reads it and every wait has a deadline. Listen *before* reading the
database, so a change between the read and the wait is not missed. On a single server
the hints are in-process; control-plane replicas also carry them to each other over
PostgreSQL LISTEN/NOTIFY (`PostgresRelay`), so a long poll on one replica wakes for an
output another stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import select
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator

log = logging.getLogger("homeport.notify")
CHANNEL = "homeport"


class Listener:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """Wait for a notification (or one that already came); clears it. True if notified."""
        # asyncio.timeout, not wait_for: wait_for runs the wait as a task of its own, so a
        # notification would reach the waiter one turn of the event loop later, and turns
        # are long on a busy server.
        try:
            async with asyncio.timeout(max(timeout, 0)):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True


class Notifier:
    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = defaultdict(set)
        self.relay: PostgresRelay | None = None

    def notify(self, key: str, limit: int | None = None) -> None:
        """Wake the listeners of `key`; with `limit`, at most that many (one queued input
        needs one container, not a stampede of every idle one)."""
        if self.relay is not None:
            self.relay.send(key)
        self.deliver(key, limit)

    def deliver_all(self) -> None:
        """Wake every listener of this process (notifications may have been lost)."""
        for listeners in list(self._listeners.values()):
            for listener in listeners:
                listener._event.set()

    def deliver(self, key: str, limit: int | None = None) -> None:
        """Wake this process's listeners of `key` only."""
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


class PostgresRelay:
    """Notifications between replicas: each key this replica notifies is sent with
    pg_notify (from a thread, in batches), and keys other replicas send are delivered to
    this replica's listeners. Both sides reconnect after a PostgreSQL restart; a hint lost
    meanwhile only delays a waiter until its next re-read."""

    def __init__(self, dsn: str, notifier: Notifier, loop: asyncio.AbstractEventLoop) -> None:
        self.dsn = dsn
        self.notifier = notifier
        self.loop = loop
        self.origin = uuid.uuid4().hex[:12]
        self._outgoing: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._listen, name="homeport-pg-listen", daemon=True).start()
        threading.Thread(target=self._send, name="homeport-pg-notify", daemon=True).start()
        self.notifier.relay = self

    def stop(self) -> None:
        self._stopped.set()
        self._outgoing.put("")

    def send(self, key: str) -> None:
        self._outgoing.put(key)

    def _connect(self):  # type: ignore[no-untyped-def]
        import psycopg2  # type: ignore[import-untyped]

        connection = psycopg2.connect(self.dsn)
        connection.autocommit = True
        return connection

    def _send(self) -> None:
        connection = None
        while not self._stopped.is_set():
            keys = {self._outgoing.get()}
            while not self._outgoing.empty() and len(keys) < 500:
                keys.add(self._outgoing.get())
            keys.discard("")
            if not keys:
                continue
            try:
                if connection is None:
                    connection = self._connect()
                with connection.cursor() as cursor:
                    for key in keys:
                        cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.origin}|{key}"))
            except Exception as error:
                log.warning("cannot send notifications to other replicas: %s; reconnecting", error)
                connection = None
                self._stopped.wait(1.0)

    def _listen(self) -> None:
        while not self._stopped.is_set():
            try:
                connection = self._connect()
                with connection.cursor() as cursor:
                    cursor.execute(f"LISTEN {CHANNEL}")
                # Whatever was notified while not listening: every waiter looks again.
                self.loop.call_soon_threadsafe(self.notifier.deliver_all)
                while not self._stopped.is_set():
                    if select.select([connection], [], [], 1.0) == ([], [], []):
                        continue
                    connection.poll()
                    keys = set()
                    while connection.notifies:
                        origin, _, key = connection.notifies.pop(0).payload.partition("|")
                        if origin != self.origin:
                            keys.add(key)
                    for key in keys:
                        self.loop.call_soon_threadsafe(self.notifier.deliver, key)
            except Exception as error:
                log.warning("lost notifications from other replicas: %s; reconnecting", error)
                self._stopped.wait(1.0)

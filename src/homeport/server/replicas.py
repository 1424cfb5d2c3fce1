"""Control-plane replicas: several `homeport serve` against one PostgreSQL, object store
and Ray cluster. Each registers itself and beats every few seconds; a replica not seen
for REPLICA_GONE_S is gone, and whichever replica notices first takes over what it owned:
its containers are stopped on every node and the inputs they held go back to the queue
(without using the functions' retries: a platform fault is not the user's failure).
Claims are exactly-once whichever replica a container talks to (calls.claim is one
conditional UPDATE per input). To keep replicas from all starting containers for the same
queue, each function has a home replica (rendezvous hashing over the live replicas) that
alone places its containers; when replicas come or go, homes move with them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

import sqlalchemy as sa

from homeport.server.store import schema

log = logging.getLogger("homeport.replicas")

HEARTBEAT_S = 2.0
REPLICA_GONE_S = 10.0


class Replicas:
    def __init__(
        self,
        engine: sa.Engine,
        server_id: str,
        address: str,
        requeue: Callable[[list[str]], int],
        stop_containers: Callable[[str], Awaitable[None]],
    ) -> None:
        self.engine = engine
        self.server_id = server_id
        self.address = address
        self._requeue = requeue
        self._stop_containers = stop_containers
        self.live: list[str] = [server_id]  # the replicas seen at the last heartbeat

    def is_home(self, function_id: str) -> bool:
        """Whether this replica places the containers of this function."""
        if len(self.live) <= 1:
            return True

        def weight(server_id: str) -> bytes:
            return hashlib.sha256(f"{server_id}:{function_id}".encode()).digest()

        return max(self.live, key=weight) == self.server_id

    def register(self) -> None:
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(
                schema.servers.insert().values(
                    id=self.server_id, address=self.address, started_at=now, last_seen=now
                )
            )

    def forget(self) -> None:
        """A clean stop: this replica's containers are stopped already."""
        with self.engine.begin() as connection:
            connection.execute(schema.servers.delete().where(schema.servers.c.id == self.server_id))

    async def run(self) -> None:
        while True:
            try:
                self._beat()
                for gone in self._gone():
                    await self.take_over(gone)
                self.live = self._live()
            except sa.exc.OperationalError as error:
                log.warning("replica heartbeat: the database is unreachable (%s); continuing", error.orig)
            except Exception:
                log.exception("replica heartbeat failed; continuing")
            await asyncio.sleep(HEARTBEAT_S)

    def _beat(self) -> None:
        s = schema.servers
        with self.engine.begin() as connection:
            updated = connection.execute(
                s.update().where(s.c.id == self.server_id).values(last_seen=time.time())
            )
            if not updated.rowcount:  # taken for gone during a long pause: come back
                now = time.time()
                connection.execute(
                    s.insert().values(id=self.server_id, address=self.address, started_at=now, last_seen=now)
                )

    def _live(self) -> list[str]:
        s = schema.servers
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(s.c.id).where(s.c.last_seen >= time.time() - REPLICA_GONE_S)
            ).all()
        return sorted({row.id for row in rows} | {self.server_id})

    def _gone(self) -> list[str]:
        s = schema.servers
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(s.c.id).where(
                    s.c.last_seen < time.time() - REPLICA_GONE_S, s.c.id != self.server_id
                )
            ).all()
        return [row.id for row in rows]

    async def take_over(self, server_id: str) -> None:
        """Settle what a gone replica owned (once: the first replica to delete its row)."""
        s, t = schema.servers, schema.tasks
        with self.engine.begin() as connection:
            deleted = connection.execute(s.delete().where(s.c.id == server_id))
            if not deleted.rowcount:
                return  # another replica took over
            task_ids = [
                row.id
                for row in connection.execute(
                    sa.select(t.c.id).where(t.c.server_id == server_id, t.c.state != "stopped")
                ).all()
            ]
            if task_ids:
                connection.execute(
                    t.update()
                    .where(t.c.id.in_(task_ids))
                    .values(
                        state="stopped",
                        stopped_at=time.time(),
                        stop_reason="its control-plane replica stopped",
                    )
                )
        await self._stop_containers(server_id)
        requeued = self._requeue(task_ids) if task_ids else 0
        log.warning(
            "replica %s is gone: %d of its container(s) stopped, %d input(s) queued again",
            server_id,
            len(task_ids),
            requeued,
        )

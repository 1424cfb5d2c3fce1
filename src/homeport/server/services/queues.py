"""Queue contents: FIFO items per partition, with a time to live and Modal's limits."""

from __future__ import annotations

import time

import sqlalchemy as sa

from homeport.server import errors
from homeport.server.notify import Notifier
from homeport.server.store import schema

q = schema.queue_items
MAX_ITEM_BYTES = 1024 * 1024  # Modal's documented limits
MAX_PARTITION_ITEMS = 5000
DEFAULT_TTL_S = 24 * 3600


def items_key(queue_id: str, partition: bytes) -> str:
    return f"queue-items:{queue_id}:{partition.hex()}"


def remove_contents(connection: sa.Connection, queue_id: str) -> None:
    connection.execute(q.delete().where(q.c.queue_id == queue_id))


class QueueService:
    def __init__(self, engine: sa.Engine, notifier: Notifier) -> None:
        self.engine = engine
        self.notifier = notifier

    def put(self, queue_id: str, partition: bytes, values: list[bytes], ttl_s: int) -> None:
        for value in values:
            if len(value) > MAX_ITEM_BYTES:
                raise errors.invalid_argument(
                    f"a Queue item of {len(value)} bytes is over the limit of {MAX_ITEM_BYTES} bytes (1 MiB); "
                    "store large values in a Volume or Dict and queue a reference"
                )
        now = time.time()
        expires = now + (ttl_s or DEFAULT_TTL_S)
        with self.engine.begin() as connection:
            count = self._count(connection, queue_id, partition, now)
            if count + len(values) > MAX_PARTITION_ITEMS:
                raise errors.resource_exhausted(
                    f"Queue partition is full ({count} of {MAX_PARTITION_ITEMS} items); get items before putting more"
                )
            connection.execute(
                q.insert(),
                [
                    {"queue_id": queue_id, "partition_key": partition, "value": v, "expires_at": expires}
                    for v in values
                ],
            )
            # Every item of a partition shares the newest put's expiry, as on Modal.
            connection.execute(
                q.update()
                .where(q.c.queue_id == queue_id, q.c.partition_key == partition)
                .values(expires_at=expires)
            )
        self.notifier.notify(items_key(queue_id, partition))

    def _count(self, connection: sa.Connection, queue_id: str, partition: bytes | None, now: float) -> int:
        query = sa.select(sa.func.count()).where(q.c.queue_id == queue_id, q.c.expires_at > now)
        if partition is not None:
            query = query.where(q.c.partition_key == partition)
        return int(connection.execute(query).scalar_one())

    def take(self, queue_id: str, partition: bytes, limit: int) -> list[bytes]:
        """Remove and return up to `limit` of the oldest items (never the same item twice)."""
        now = time.time()
        taken = []
        with self.engine.begin() as connection:
            rows = connection.execute(
                sa.select(q.c.seq, q.c.value)
                .where(q.c.queue_id == queue_id, q.c.partition_key == partition, q.c.expires_at > now)
                .order_by(q.c.seq)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                if connection.execute(q.delete().where(q.c.seq == row.seq)).rowcount:
                    taken.append(row.value)
        return taken

    def peek_after(
        self, queue_id: str, partition: bytes, after_seq: int, limit: int = 100
    ) -> list[tuple[int, bytes]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(q.c.seq, q.c.value)
                .where(
                    q.c.queue_id == queue_id,
                    q.c.partition_key == partition,
                    q.c.seq > after_seq,
                    q.c.expires_at > time.time(),
                )
                .order_by(q.c.seq)
                .limit(limit)
            ).all()
        return [(row.seq, row.value) for row in rows]

    def length(self, queue_id: str, partition: bytes | None) -> int:
        with self.engine.connect() as connection:
            return self._count(connection, queue_id, partition, time.time())

    def clear(self, queue_id: str, partition: bytes | None) -> None:
        with self.engine.begin() as connection:
            query = q.delete().where(q.c.queue_id == queue_id)
            if partition is not None:
                query = query.where(q.c.partition_key == partition)
            connection.execute(query)

    def partition_count(self, queue_id: str) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count(sa.distinct(q.c.partition_key))).where(q.c.queue_id == queue_id)
                ).scalar_one()
            )

    def expire(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(q.delete().where(q.c.expires_at <= time.time()))

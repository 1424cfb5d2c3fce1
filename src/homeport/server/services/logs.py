"""Container output: stored per app, streamed live to `modal run` and `modal app logs`."""

from __future__ import annotations

import dataclasses
import time

import sqlalchemy as sa

from homeport.server.notify import Notifier
from homeport.server.store import schema

# Messages the server writes into an app's log (container exits, timeouts) use this fd.
FD_STDOUT, FD_STDERR, FD_INFO = 1, 2, 3


def logs_key(app_id: str) -> str:
    return f"logs:{app_id}"


@dataclasses.dataclass(frozen=True)
class LogEntry:
    seq: int
    task_id: str
    function_id: str
    file_descriptor: int
    data: str
    timestamp: float


class LogService:
    def __init__(self, engine: sa.Engine, notifier: Notifier) -> None:
        self.engine = engine
        self.notifier = notifier

    def append(self, app_id: str, task_id: str | None, function_id: str | None, fd: int, data: str) -> None:
        if not data:
            return
        with self.engine.begin() as connection:
            connection.execute(
                schema.logs.insert().values(
                    app_id=app_id,
                    task_id=task_id,
                    function_id=function_id,
                    file_descriptor=fd,
                    data=data,
                    timestamp=time.time(),
                )
            )
        self.notifier.notify(logs_key(app_id))

    def read(
        self,
        app_id: str,
        after_seq: int = 0,
        limit: int = 1000,
        task_id: str = "",
        function_id: str = "",
        since: float | None = None,
        until: float | None = None,
        newest_first: bool = False,
    ) -> list[LogEntry]:
        log = schema.logs
        query = sa.select(log).where(log.c.app_id == app_id, log.c.seq > after_seq)
        if task_id:
            query = query.where(log.c.task_id == task_id)
        if function_id:
            query = query.where(log.c.function_id == function_id)
        if since is not None:
            query = query.where(log.c.timestamp >= since)
        if until is not None:
            query = query.where(log.c.timestamp <= until)
        query = query.order_by(log.c.seq.desc() if newest_first else log.c.seq).limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            LogEntry(
                row.seq,
                row.task_id or "",
                row.function_id or "",
                row.file_descriptor,
                row.data,
                row.timestamp,
            )
            for row in rows
        ]

    def count(
        self, app_id: str, since: float, until: float, bucket_s: int, task_id: str = "", function_id: str = ""
    ) -> dict[tuple[int, int], int]:
        """(bucket index, file descriptor) -> entries logged in [since, until)."""
        log = schema.logs
        bucket = sa.cast((log.c.timestamp - since) / bucket_s, sa.Integer).label("bucket")
        query = (
            sa.select(bucket, log.c.file_descriptor, sa.func.count())
            .where(log.c.app_id == app_id, log.c.timestamp >= since, log.c.timestamp < until)
            .group_by(bucket, log.c.file_descriptor)
        )
        if task_id:
            query = query.where(log.c.task_id == task_id)
        if function_id:
            query = query.where(log.c.function_id == function_id)
        with self.engine.connect() as connection:
            return {(int(row[0]), int(row[1])): int(row[2]) for row in connection.execute(query)}

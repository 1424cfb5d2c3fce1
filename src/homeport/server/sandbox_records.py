"""The `sandboxes` table: reading sandboxes (by id, name, task; listings; waiting for a
result) and recording their results. `Sandboxes` (sandboxes.py) starts and ends them."""

from __future__ import annotations

import builtins
import json
import time

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.notify import Notifier
from homeport.server.store import schema

s = schema.sandboxes
GENERIC = api_pb2.GenericResult
LIST_PAGE = 100


def sandbox_key(sandbox_id: str) -> str:
    return f"sandbox:{sandbox_id}"


class SandboxRecords:
    def __init__(self, engine: sa.Engine, notifier: Notifier) -> None:
        self.engine = engine
        self.notifier = notifier

    # --- results ------------------------------------------------------------------------------

    def _finish(self, sandbox_id: str, result: api_pb2.GenericResult) -> None:
        self._record_result(result, s.c.id == sandbox_id)
        self.notifier.notify(sandbox_key(sandbox_id))

    def _record_result(self, result: api_pb2.GenericResult, *which: sa.ColumnElement[bool]) -> None:
        """The result of the running sandboxes `which` selects; its name is free again."""
        with self.engine.begin() as connection:
            connection.execute(
                s.update()
                .where(s.c.result.is_(None), *which)
                .values(result=result.SerializeToString(), finished_at=time.time(), name=None)
            )

    def recover(self) -> None:
        """At start-up on one machine: sandboxes of a previous run went with it (their
        containers die with the server); they end as failed, saying so."""
        self._record_result(
            GENERIC(status=GENERIC.GENERIC_STATUS_FAILURE, exitcode=1, exception="the server restarted")
        )

    def recover_replica(self, server_id: str) -> None:
        """Cluster mode: a replica is gone, and the sandboxes it started were stopped on
        their nodes with its other containers (replicas.py); they end as failed."""
        failed = GENERIC(
            status=GENERIC.GENERIC_STATUS_FAILURE,
            exitcode=1,
            exception="the control-plane replica that started it stopped",
        )
        with self.engine.connect() as connection:
            ended = (
                connection.execute(sa.select(s.c.id).where(s.c.server_id == server_id, s.c.result.is_(None)))
                .scalars()
                .all()
            )
        self._record_result(failed, s.c.server_id == server_id)
        for sandbox_id in ended:
            self.notifier.notify(sandbox_key(sandbox_id))

    # --- reading ------------------------------------------------------------------------------

    def row(self, sandbox_id: str, workspace_id: str) -> sa.Row:  # type: ignore[type-arg]
        """A sandbox of this workspace; NOT_FOUND for any other."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(s).where(s.c.id == sandbox_id, s.c.workspace_id == workspace_id)
            ).first()
        if row is None:
            raise errors.not_found(f"sandbox {sandbox_id} not found")
        return row

    async def wait(
        self, workspace_id: str, sandbox_id: str, timeout_s: float
    ) -> tuple[sa.Row, api_pb2.GenericResult | None]:  # type: ignore[type-arg]
        """The workspace's sandbox and its result, waiting up to `timeout_s` for one."""
        deadline = time.monotonic() + max(0.0, min(timeout_s, 50.0))
        with self.notifier.listen(sandbox_key(sandbox_id)) as listener:
            while True:
                row = self.row(sandbox_id, workspace_id)
                if row.result is not None:
                    return row, GENERIC.FromString(row.result)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return row, None
                await listener.wait(remaining)

    def by_name(self, app_id: str, name: str) -> sa.Row | None:  # type: ignore[type-arg]
        with self.engine.connect() as connection:
            return connection.execute(sa.select(s).where(s.c.app_id == app_id, s.c.name == name)).first()

    def list(
        self,
        workspace_id: str,
        app_ids: list[str] | None,
        environment_name: str,
        before: float,
        tags: dict[str, str],
    ) -> list[sa.Row]:  # type: ignore[type-arg]
        """A page of running sandboxes with these tags, newest first, created before
        `before` (0: no bound). Tags are matched here, not in SQL, so rows are read in
        batches until the page is full or none are left: an empty page ends the client's
        listing, so it must mean "no more"."""
        query = self._running(workspace_id)
        if app_ids is not None:
            query = query.where(s.c.app_id.in_(app_ids))
        elif environment_name:
            query = query.where(s.c.environment_name == environment_name)
        matching: builtins.list[sa.Row] = []  # type: ignore[type-arg]
        while len(matching) < LIST_PAGE:
            batch = query.where(s.c.created_at < before) if before else query
            with self.engine.connect() as connection:
                rows = connection.execute(batch.order_by(s.c.created_at.desc()).limit(LIST_PAGE)).all()
            matching += [row for row in rows if tags.items() <= json.loads(row.tags).items()]
            if len(rows) < LIST_PAGE:
                break
            before = rows[-1].created_at
        return matching[:LIST_PAGE]

    @staticmethod
    def _running(workspace_id: str) -> sa.Select:  # type: ignore[type-arg]
        return sa.select(s).where(s.c.workspace_id == workspace_id, s.c.result.is_(None))

    def _by_id(self, sandbox_id: str) -> sa.Row | None:  # type: ignore[type-arg]
        with self.engine.connect() as connection:
            return connection.execute(sa.select(s).where(s.c.id == sandbox_id)).first()

    def by_task(self, task_id: str) -> sa.Row | None:  # type: ignore[type-arg]
        with self.engine.connect() as connection:
            return connection.execute(sa.select(s).where(s.c.task_id == task_id)).first()

    def running_rows(self, workspace_id: str, app_id: str = "") -> builtins.list[sa.Row]:  # type: ignore[type-arg]
        query = self._running(workspace_id)
        if app_id:
            query = query.where(s.c.app_id == app_id)
        with self.engine.connect() as connection:
            return list(connection.execute(query.order_by(s.c.created_at)).all())

    def set_tags(self, sandbox_id: str, tags: dict[str, str]) -> None:
        with self.engine.begin() as connection:
            connection.execute(s.update().where(s.c.id == sandbox_id).values(tags=json.dumps(tags)))

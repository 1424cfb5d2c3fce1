"""Environments: named partitions of a workspace (`-e/--env`, default `main`)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from homeport import ids
from homeport.server.store import db, schema


class EnvironmentService:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get_or_create(self, workspace_id: str, name: str) -> str:
        return db.once_more_on_conflict(lambda: self._get_or_create(workspace_id, name))

    def _get_or_create(self, workspace_id: str, name: str) -> str:
        e = schema.environments
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.select(e.c.id).where(e.c.workspace_id == workspace_id, e.c.name == name)
            ).first()
            if row is not None:
                return str(row.id)
            environment_id = ids.new_id("environment")
            connection.execute(
                e.insert().values(
                    id=environment_id, workspace_id=workspace_id, name=name, created_at=time.time()
                )
            )
            return environment_id

    def list(self, workspace_id: str) -> list[tuple[str, str]]:
        e = schema.environments
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(e.c.id, e.c.name).where(e.c.workspace_id == workspace_id).order_by(e.c.created_at)
            )
            return [(row.id, row.name) for row in rows]

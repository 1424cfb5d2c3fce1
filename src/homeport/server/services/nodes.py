"""The machines that run containers: each node agent reports what it has and what of it
is taken, every few seconds; `homeport nodes` and placement read it back. A node not
heard from for a while is shown as gone (its containers with it)."""

from __future__ import annotations

import builtins
import dataclasses
import json
import time

import sqlalchemy as sa

from homeport.agent.node import REPORT_INTERVAL_S, NodeInventory
from homeport.server.store import db, schema

# A node missing this many reports in a row is taken for gone.
MISSED_REPORTS = 3


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    inventory: NodeInventory
    last_seen: float
    up: bool


class NodeRegistry:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def report(self, inventory: NodeInventory) -> None:
        n = schema.nodes
        values = dict(
            started_at=inventory.started_at,
            last_seen=time.time(),
            cpu_count=inventory.cpu_count,
            cpu_busy=inventory.cpu_busy,
            memory_budget_mib=inventory.memory_budget_mib,
            memory_reserved_mib=inventory.memory_reserved_mib,
            gpus=json.dumps(list(inventory.gpus)),
            gpus_busy=inventory.gpus_busy,
            containers=inventory.containers,
        )

        def upsert() -> None:
            with self.engine.begin() as connection:
                updated = connection.execute(n.update().where(n.c.id == inventory.node_id).values(**values))
                if not updated.rowcount:
                    connection.execute(n.insert().values(id=inventory.node_id, **values))

        db.once_more_on_conflict(upsert)

    def list(self, now: float | None = None) -> builtins.list[NodeRecord]:
        now = time.time() if now is None else now
        n = schema.nodes
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(n).order_by(n.c.id)).all()
        return [
            NodeRecord(
                NodeInventory(
                    node_id=row.id,
                    started_at=row.started_at,
                    cpu_count=row.cpu_count,
                    cpu_busy=row.cpu_busy,
                    memory_budget_mib=row.memory_budget_mib,
                    memory_reserved_mib=row.memory_reserved_mib,
                    gpus=tuple(json.loads(row.gpus)),
                    gpus_busy=row.gpus_busy,
                    containers=row.containers,
                ),
                row.last_seen,
                now - row.last_seen < MISSED_REPORTS * REPORT_INTERVAL_S,
            )
            for row in rows
        ]

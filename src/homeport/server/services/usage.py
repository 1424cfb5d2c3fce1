"""Usage: what each container used and reserved from its start to its stop (CPU time by
cgroup accounting, reserved CPU, reserved and peak memory, GPUs by type), one row per
container, written when it stops. Billing reports and the usage pages are sums of these
rows, split by the hour or day they fall in."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from homeport.server.store import schema


@dataclasses.dataclass(frozen=True)
class ContainerUsage:
    task_id: str
    workspace_id: str
    app_id: str
    function_id: str
    kind: str  # function | build
    node_id: str
    started_at: float  # epoch seconds
    stopped_at: float
    cpu_seconds: float
    cpu_reserved_cores: float
    memory_reserved_mib: int
    memory_peak_mib: float
    gpu_type: str
    gpu_count: int


class UsageService:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def record(self, usage: ContainerUsage) -> None:
        """Record a container's usage once: recording it again is a no-op (a container's end
        is settled again after a database failure, and the first attempt may have
        committed this row before the connection broke)."""
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        with self.engine.begin() as connection:
            connection.execute(
                insert(schema.usage)
                .values(**dataclasses.asdict(usage))
                .on_conflict_do_nothing(index_elements=[schema.usage.c.task_id])
            )

    def between(self, workspace_id: str, start: float, end: float) -> list[ContainerUsage]:
        """Containers of a workspace that ran at some time in [start, end)."""
        u = schema.usage
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(u).where(
                    u.c.workspace_id == workspace_id, u.c.started_at < end, u.c.stopped_at >= start
                )
            ).all()
        return [ContainerUsage(**row._mapping) for row in rows]

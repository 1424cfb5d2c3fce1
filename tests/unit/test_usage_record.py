"""A container's usage is recorded once, however often its end is settled."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from homeport.server.services.usage import ContainerUsage, UsageService
from homeport.server.store import db, schema


def test_settling_a_containers_end_twice_records_its_usage_once(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'usage.db'}")
    db.upgrade(engine)
    usage = ContainerUsage(
        task_id="ta-1", workspace_id="ac-1", app_id="ap-1", function_id="fu-1", kind="function",
        node_id="node-0", started_at=1.0, stopped_at=2.0, cpu_seconds=0.5, cpu_reserved_cores=0.25,
        memory_reserved_mib=128, memory_peak_mib=10.0, gpu_type="", gpu_count=0,
    )  # fmt: skip
    service = UsageService(engine)
    service.record(usage)
    service.record(usage)  # a retried settle: the first attempt had committed
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(schema.usage)).scalar_one() == 1
    assert [u.task_id for u in service.between("ac-1", 0.0, 10.0)] == ["ta-1"]

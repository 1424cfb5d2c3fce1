"""What ran and how it went, from recorded data: inputs (when queued, taken and finished,
and their outcome), containers (started, failed) and their usage. Answers `modal app
stats`, `modal function stats` and `modal function calls`."""

from __future__ import annotations

import dataclasses
import statistics

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport.server.services.calls import CLAIMED, DONE, PENDING
from homeport.server.store import schema

GENERIC = api_pb2.GenericResult
# An input's outcome as `modal function calls` shows it.
CALL_STATUS: dict[int, int] = {
    GENERIC.GENERIC_STATUS_SUCCESS: api_pb2.FUNCTION_CALL_INPUT_STATUS_SUCCESS,
    GENERIC.GENERIC_STATUS_FAILURE: api_pb2.FUNCTION_CALL_INPUT_STATUS_FAILURE,
    GENERIC.GENERIC_STATUS_TIMEOUT: api_pb2.FUNCTION_CALL_INPUT_STATUS_TIMEOUT,
    GENERIC.GENERIC_STATUS_TERMINATED: api_pb2.FUNCTION_CALL_INPUT_STATUS_TERMINATED,
    GENERIC.GENERIC_STATUS_INIT_FAILURE: api_pb2.FUNCTION_CALL_INPUT_STATUS_INIT_FAILURE,
    GENERIC.GENERIC_STATUS_INTERNAL_FAILURE: api_pb2.FUNCTION_CALL_INPUT_STATUS_INTERNAL_FAILURE,
}
PERCENTILES = (5000, 9000, 9900)  # basis points the client shows: p50, p90, p99
MAX_ROWS = 100_000


@dataclasses.dataclass(frozen=True)
class InputRecord:
    input_id: str
    function_call_id: str
    function_id: str
    created_at: float
    claimed_at: float | None
    finished_at: float | None
    state: str
    status: int | None
    task_id: str | None
    attempt: int  # retries used

    @property
    def call_status(self) -> int:
        if self.state == PENDING:
            return api_pb2.FUNCTION_CALL_INPUT_STATUS_PENDING
        if self.state == CLAIMED:
            return api_pb2.FUNCTION_CALL_INPUT_STATUS_RUNNING
        return CALL_STATUS.get(self.status or 0, api_pb2.FUNCTION_CALL_INPUT_STATUS_UNSPECIFIED)


def distribution(values: list[float], unit: str) -> api_pb2.StatsPercentileDistribution | None:
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        points = [ordered[0]] * len(PERCENTILES)
    else:
        cuts = statistics.quantiles(ordered, n=10_000, method="inclusive")
        points = [cuts[basis - 1] for basis in PERCENTILES]
    return api_pb2.StatsPercentileDistribution(
        unit=unit,
        percentiles=[
            api_pb2.StatsPercentile(percentile_basis_points=basis, value=value)
            for basis, value in zip(PERCENTILES, points, strict=True)
        ],
    )


class StatsService:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def family(self, function_id: str, with_variants: bool) -> list[str]:
        """A function and, when asked, its parametrized variants (class instances)."""
        if not with_variants:
            return [function_id]
        f = schema.functions
        with self.engine.connect() as connection:
            variants = connection.execute(sa.select(f.c.id).where(f.c.parent_id == function_id)).scalars()
            return [function_id, *variants]

    def inputs(
        self, function_ids: list[str], since: float, until: float, newest: int | None = None
    ) -> list[InputRecord]:
        """Inputs of these functions queued in [since, until), or the newest ones."""
        i = schema.inputs
        query = sa.select(
            i.c.id, i.c.function_call_id, i.c.function_id, i.c.created_at, i.c.claimed_at, i.c.finished_at,
            i.c.state, i.c.status, i.c.task_id, i.c.attempt,
        ).where(i.c.function_id.in_(function_ids))  # fmt: skip
        if newest is None:
            query = query.where(i.c.created_at >= since, i.c.created_at < until).order_by(
                i.c.created_at.desc()
            )
            query = query.limit(MAX_ROWS)
        else:
            query = query.order_by(i.c.created_at.desc()).limit(newest)
        with self.engine.connect() as connection:
            return [InputRecord(*tuple(row)) for row in connection.execute(query)]

    def finished_between(self, function_ids: list[str], since: float, until: float) -> list[InputRecord]:
        i = schema.inputs
        query = sa.select(
            i.c.id, i.c.function_call_id, i.c.function_id, i.c.created_at, i.c.claimed_at, i.c.finished_at,
            i.c.state, i.c.status, i.c.task_id, i.c.attempt,
        ).where(
            i.c.function_id.in_(function_ids), i.c.state == DONE, i.c.finished_at >= since, i.c.finished_at < until
        ).limit(MAX_ROWS)  # fmt: skip
        with self.engine.connect() as connection:
            return [InputRecord(*tuple(row)) for row in connection.execute(query)]

    def running_at(self, function_ids: list[str], moment: float) -> int:
        i = schema.inputs
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count()).where(
                        i.c.function_id.in_(function_ids),
                        i.c.claimed_at < moment,
                        sa.or_(i.c.finished_at.is_(None), i.c.finished_at >= moment),
                        i.c.state != PENDING,
                    )
                ).scalar_one()
            )

    def containers(self, function_ids: list[str], since: float, until: float) -> list[sa.Row]:
        """Containers of these functions alive at some time in [since, until)."""
        t = schema.tasks
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    sa.select(
                        t.c.id, t.c.function_id, t.c.state, t.c.exit_code, t.c.created_at, t.c.stopped_at
                    ).where(
                        t.c.function_id.in_(function_ids),
                        t.c.created_at < until,
                        sa.or_(t.c.stopped_at.is_(None), t.c.stopped_at >= since),
                    )
                ).all()
            )

    def usage(self, function_ids: list[str], since: float, until: float) -> list[sa.Row]:
        u = schema.usage
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    sa.select(u.c.cpu_seconds, u.c.memory_peak_mib, u.c.started_at, u.c.stopped_at).where(
                        u.c.function_id.in_(function_ids), u.c.started_at < until, u.c.stopped_at >= since
                    )
                ).all()
            )

"""Function calls and their inputs and outputs: the durable input queue.

An input is `pending` until a container claims it, `claimed` while it runs, and `done`
once its final output is stored. Every transition is committed before the RPC that
caused it answers, so a server restart loses nothing that was acknowledged: claimed
inputs of containers that died with the server go back to `pending`.

Retries are done here, on the server (the client is told `sync_client_retries_enabled
= False`, so client 1.6.4 never calls FunctionRetryInputs): a failed attempt with
retries left goes back to `pending` after the policy's backoff instead of producing an
output.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import NamedTuple

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport import ids
from homeport.server import errors
from homeport.server.metrics import Metrics
from homeport.server.notify import Notifier
from homeport.server.services.call_statements import (
    CALL_IDENTITY,
    CANCELLED_CLAIMS,
    CLAIM_CANDIDATES,
    CLAIM_CANDIDATES_SQLITE,
    CLAIMED,
    DATA_AFTER,
    DELETE_OUTPUTS,
    DONE,
    DROP_DATA,
    FINISH,
    FINISH_OF_TASK,
    INPUT_COUNT,
    INSERT_CALL,
    INSERT_INPUTS,
    INSERT_OUTPUT,
    OUTPUTS_AFTER,
    OUTPUTS_IN_RANGE,
    PENDING,
    RUNNING_INPUT,
    RUNNING_INPUT_OF_TASK,
    TAKE,
    UNFINISHED,
)
from homeport.server.store import schema


def queue_key(function_id: str) -> str:
    return f"queue:{function_id}"


def outputs_key(function_call_id: str) -> str:
    return f"outputs:{function_call_id}"


def data_key(function_call_id: str, direction: str) -> str:
    return f"data-{direction}:{function_call_id}"


class CallIdentity(NamedTuple):
    """What never changes about a call once it is made (cached: read on every RPC about it)."""

    id: str
    workspace_id: str
    function_id: str
    app_id: str
    invocation_type: int


@dataclasses.dataclass(frozen=True)
class ClaimedInput:
    input_id: str
    function_call_id: str
    idx: int
    attempt: int
    payload: api_pb2.FunctionInput
    invocation_type: int


@dataclasses.dataclass(frozen=True)
class StoredOutput:
    seq: int
    input_id: str
    idx: int
    result: api_pb2.GenericResult
    data_format: int
    retry_count: int


def retry_delay_s(policy: api_pb2.FunctionRetryPolicy, attempt: int) -> float:
    """Delay before retry number `attempt` (1-based), as modal.Retries documents it."""
    initial = (policy.initial_delay_ms or 1000) / 1000
    coefficient = policy.backoff_coefficient or 2.0
    maximum = (policy.max_delay_ms or 60_000) / 1000
    return float(min(initial * coefficient ** (attempt - 1), maximum))


_inputs = schema.inputs


class CallService:
    def __init__(self, engine: sa.Engine, notifier: Notifier, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.notifier = notifier
        self.metrics = metrics or Metrics()
        # Told of each call and input made, with its workspace (the ownership check's cache).
        self.created: Callable[[str, str], None] = lambda object_id, workspace_id: None
        self._claim_candidates = (
            CLAIM_CANDIDATES_SQLITE if engine.dialect.name == "sqlite" else CLAIM_CANDIDATES
        )
        self._calls: dict[str, CallIdentity] = {}  # a call's identity never changes once made

    # --- calls and inputs ----------------------------------------------------------

    def create_call(
        self, workspace_id: str, function_id: str, app_id: str, invocation_type: int, call_type: int
    ) -> str:
        return self.start_call(workspace_id, function_id, app_id, invocation_type, call_type, [])[0]

    def start_call(
        self, workspace_id: str, function_id: str, app_id: str, invocation_type: int, call_type: int,
        items: list[tuple[int, api_pb2.FunctionInput]],
    ) -> tuple[str, list[str]]:  # fmt: skip
        """A new call and its first inputs, in one transaction: (call id, input ids)."""
        function_call_id = ids.new_id("function_call")
        with self.engine.begin() as connection:
            connection.execute(
                INSERT_CALL,
                {
                    "id": function_call_id,
                    "workspace_id": workspace_id,
                    "function_id": function_id,
                    "app_id": app_id,
                    "invocation_type": invocation_type,
                    "call_type": call_type,
                    "created_at": time.time(),
                },
            )
            input_ids = self._insert_inputs(connection, function_call_id, function_id, items)
        self._remember(CallIdentity(function_call_id, workspace_id, function_id, app_id, invocation_type))
        for object_id in (function_call_id, *input_ids):
            self.created(object_id, workspace_id)
        if items:
            self.notifier.notify(queue_key(function_id), limit=len(items))
        return function_call_id, input_ids

    def call(self, workspace_id: str, function_call_id: str) -> CallIdentity:
        """The call's identity (id, workspace, function, app, invocation type)."""
        identity = self._calls.get(function_call_id)
        if identity is None:
            with self.engine.connect() as connection:
                row = connection.execute(CALL_IDENTITY, {"b_call_id": function_call_id}).first()
            if row is not None:
                identity = CallIdentity(*row)
                self._remember(identity)
        if identity is None or identity.workspace_id != workspace_id:
            raise errors.not_found(f"function call {function_call_id} not found")
        return identity

    def _remember(self, identity: CallIdentity) -> None:
        if len(self._calls) > 100_000:
            self._calls.clear()
        self._calls[identity.id] = identity

    def enqueue(
        self, function_call_id: str, function_id: str, items: list[tuple[int, api_pb2.FunctionInput]]
    ) -> list[str]:
        if not items:
            return []
        with self.engine.begin() as connection:
            input_ids = self._insert_inputs(connection, function_call_id, function_id, items)
        identity = self._calls.get(function_call_id)
        if identity is not None:  # the ownership check of each output then reads no database
            for input_id in input_ids:
                self.created(input_id, identity.workspace_id)
        self.notifier.notify(queue_key(function_id), limit=len(items))
        return input_ids

    @staticmethod
    def _insert_inputs(
        connection: sa.Connection,
        function_call_id: str,
        function_id: str,
        items: list[tuple[int, api_pb2.FunctionInput]],
    ) -> list[str]:
        now = time.time()
        rows = [
            dict(
                id=ids.new_id("input"),
                function_call_id=function_call_id,
                function_id=function_id,
                idx=idx,
                payload=function_input.SerializeToString(),
                blob_id=function_input.args_blob_id or None,
                state=PENDING,
                attempt=0,
                not_before=0.0,
                created_at=now,
            )
            for idx, function_input in items
        ]
        if rows:
            connection.execute(INSERT_INPUTS, rows)
        return [str(row["id"]) for row in rows]

    def pending_counts(self) -> dict[str, int]:
        """Number of runnable inputs per function."""
        i = schema.inputs
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(i.c.function_id, sa.func.count())
                .where(i.c.state == PENDING, i.c.not_before <= time.time())
                .group_by(i.c.function_id)
            )
            return {row[0]: row[1] for row in rows}

    def next_retry_at(self) -> float | None:
        i = schema.inputs
        with self.engine.connect() as connection:
            value = connection.execute(
                sa.select(sa.func.min(i.c.not_before)).where(
                    i.c.state == PENDING, i.c.not_before > time.time()
                )
            ).scalar()
        return float(value) if value is not None else None

    def claim(self, function_id: str, task_id: str, limit: int) -> list[ClaimedInput]:
        now = time.time()
        claimed: list[ClaimedInput] = []
        waited: list[float] = []
        with self.engine.begin() as connection:
            candidates = connection.execute(
                self._claim_candidates, {"b_function_id": function_id, "b_now": now, "b_limit": limit}
            ).all()
            for row in candidates:
                taken = connection.execute(TAKE, {"b_input_id": row.id, "b_task_id": task_id, "b_now": now})
                if taken.rowcount:
                    waited.append(now - row.created_at)
                    payload = api_pb2.FunctionInput()
                    payload.ParseFromString(row.payload)
                    invocation_type = self._invocation_type(connection, row.function_call_id)
                    claimed.append(
                        ClaimedInput(
                            row.id, row.function_call_id, row.idx, row.attempt, payload, invocation_type
                        )
                    )
        if claimed:
            self.metrics.inputs_taken(function_id, waited)
        return claimed

    def _invocation_type(self, connection: sa.Connection, function_call_id: str) -> int:
        cached = self._calls.get(function_call_id)
        if cached is not None:
            return int(cached.invocation_type)
        c = schema.function_calls
        return int(
            connection.execute(sa.select(c.c.invocation_type).where(c.c.id == function_call_id)).scalar_one()
        )

    def claimed_by(self, task_id: str) -> list[sa.Row]:
        i = schema.inputs
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    sa.select(
                        i.c.id, i.c.function_call_id, i.c.function_id, i.c.claimed_at, i.c.attempt
                    ).where(i.c.task_id == task_id, i.c.state == CLAIMED)
                ).all()
            )

    # --- outputs ---------------------------------------------------------------------

    def finish(
        self,
        input_id: str,
        result: api_pb2.GenericResult,
        data_format: int,
        retry_policy: api_pb2.FunctionRetryPolicy | None,
        task_id: str | None = None,
    ) -> bool:
        """Record an attempt's result. A failure with retries left re-queues the input.

        Returns False if the input was not running here (already finished or re-queued)."""
        now = time.time()
        retryable = result.status in (
            api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
            api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT,
            api_pb2.GenericResult.GENERIC_STATUS_TERMINATED,
            api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE,
        )
        requeued: str | None = None
        with self.engine.begin() as connection:
            if retryable and retry_policy is not None and retry_policy.retries > 0:
                running, requeued = self._retry_if_due(connection, input_id, task_id, retry_policy, now)
                if not running:
                    return False
            row = (
                None
                if requeued
                else self._record_output(connection, input_id, task_id, result, data_format, now)
            )
        if requeued is not None:
            self.notifier.notify(queue_key(requeued), limit=1)  # after the commit: waiters re-read
            return True
        if row is None:
            return False
        self.notifier.notify(outputs_key(row.function_call_id))
        running_s = now - row.claimed_at if row.claimed_at else None
        self.metrics.input_finished(row.function_id, result.status, running_s)
        return True

    @staticmethod
    def _record_output(
        connection: sa.Connection,
        input_id: str,
        task_id: str | None,
        result: api_pb2.GenericResult,
        data_format: int,
        now: float,
    ) -> sa.Row | None:  # type: ignore[type-arg]
        """End the input with its output; None if it was not running here. One statement
        both checks that the input is running here and ends it, so two finishers (a
        container's output, a timeout) never both succeed."""
        row = connection.execute(
            FINISH if task_id is None else FINISH_OF_TASK,
            {"b_input_id": input_id, "b_task_id": task_id, "b_now": now, "b_status": result.status},
        ).first()
        if row is not None:
            connection.execute(
                INSERT_OUTPUT,
                {
                    "function_call_id": row.function_call_id,
                    "input_id": input_id,
                    "idx": row.idx,
                    "result": result.SerializeToString(),
                    "data_format": data_format,
                    "retry_count": row.attempt,
                    "created_at": now,
                    "blob_id": result.data_blob_id or None,
                },
            )
        return row

    @staticmethod
    def _retry_if_due(
        connection: sa.Connection,
        input_id: str,
        task_id: str | None,
        policy: api_pb2.FunctionRetryPolicy,
        now: float,
    ) -> tuple[bool, str | None]:
        """A failed attempt with retries left goes back to the queue after its backoff.
        Returns (whether the input was running here, its function if it was re-queued)."""
        i = schema.inputs
        row = connection.execute(
            RUNNING_INPUT if task_id is None else RUNNING_INPUT_OF_TASK,
            {"b_input_id": input_id, "b_task_id": task_id},
        ).first()
        if row is None:
            return False, None
        if row.attempt >= policy.retries or row.cancelled:
            return True, None
        attempt = row.attempt + 1
        connection.execute(
            i.update()
            .where(i.c.id == input_id, i.c.state == CLAIMED)
            .values(
                state=PENDING,
                task_id=None,
                attempt=attempt,
                not_before=now + retry_delay_s(policy, attempt),
            )
        )
        return True, str(row.function_id)

    def outputs_after(
        self, function_call_id: str, after_seq: int, limit: int, index_range: tuple[int, int] | None = None
    ) -> list[StoredOutput]:
        """Outputs stored after `after_seq`, optionally only those whose input index is in range."""
        parameters: dict[str, object] = {
            "b_call_id": function_call_id,
            "b_after": after_seq,
            "b_limit": limit,
        }
        if index_range is not None:
            parameters["b_first_idx"], parameters["b_last_idx"] = index_range
        with self.engine.connect() as connection:
            rows = connection.execute(
                OUTPUTS_AFTER if index_range is None else OUTPUTS_IN_RANGE, parameters
            ).all()
        outputs = []
        for row in rows:
            result = api_pb2.GenericResult()
            result.ParseFromString(row.result)
            outputs.append(
                StoredOutput(row.seq, row.input_id, row.idx, result, row.data_format, row.retry_count)
            )
        return outputs

    def delivered(self, function_call_id: str, cleared_seqs: list[int]) -> int:
        """Outputs handed to the caller: delete those it cleared, in the same transaction
        as counting the call's unfinished inputs (which its answer carries)."""
        if not cleared_seqs:  # nothing to delete: a read, no write transaction
            return self.unfinished_count(function_call_id)
        with self.engine.begin() as connection:
            connection.execute(DELETE_OUTPUTS, {"b_seqs": cleared_seqs})
            return int(connection.execute(UNFINISHED, {"b_call_id": function_call_id}).scalar_one())

    def unfinished_count(self, function_call_id: str) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(UNFINISHED, {"b_call_id": function_call_id}).scalar_one())

    def input_count(self, function_call_id: str) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(INPUT_COUNT, {"b_call_id": function_call_id}).scalar_one())

    def cancel(self, function_call_id: str) -> list[str]:
        """Cancel a call: pending inputs end as TERMINATED; returns the tasks running its inputs."""
        i = schema.inputs
        result = api_pb2.GenericResult(
            status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED,
            exception="the function call was cancelled",
        )
        with self.engine.begin() as connection:
            connection.execute(
                schema.function_calls.update()
                .where(schema.function_calls.c.id == function_call_id)
                .values(cancelled=True)
            )
            rows = connection.execute(
                sa.select(i.c.id, i.c.state, i.c.task_id).where(
                    i.c.function_call_id == function_call_id, i.c.state != DONE
                )
            ).all()
        for row in rows:
            if row.state == PENDING:
                with self.engine.begin() as connection:
                    connection.execute(i.update().where(i.c.id == row.id).values(state=CLAIMED, task_id=None))
                self.finish(row.id, result, api_pb2.DATA_FORMAT_PICKLE, None)
        return sorted({row.task_id for row in rows if row.state == CLAIMED and row.task_id})

    def cancelled_claims(self) -> dict[str, list[str]]:
        """Inputs of cancelled calls still held by a container: {task id: input ids}. One
        read for every container (few inputs are claimed at any time)."""
        with self.engine.connect() as connection:
            rows = connection.execute(CANCELLED_CLAIMS).all()
        held: dict[str, list[str]] = {}
        for row in rows:
            held.setdefault(row.task_id, []).append(row.id)
        return held

    def cancelled_inputs_of(self, task_id: str) -> list[str]:
        i, c = schema.inputs, schema.function_calls
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(i.c.id)
                .join(c, c.c.id == i.c.function_call_id)
                .where(i.c.task_id == task_id, i.c.state == CLAIMED, c.c.cancelled.is_(True))
            )
            return [row.id for row in rows]

    def requeue_claimed(self, task_ids: list[str] | None = None) -> int:
        """Claimed inputs go back to the queue, their attempt count unchanged: after a server
        restart no container of the previous run is left to finish them. With `task_ids`,
        only the inputs those containers held (a replica of a cluster is gone)."""
        i = schema.inputs
        condition = i.c.state == CLAIMED
        if task_ids is not None:
            condition = sa.and_(condition, i.c.task_id.in_(task_ids))
        with self.engine.begin() as connection:
            result = connection.execute(i.update().where(condition).values(state=PENDING, task_id=None))
        return int(result.rowcount or 0)

    # --- data channels (generator values) -----------------------------------------------

    def put_data(self, function_call_id: str, direction: str, chunks: list[api_pb2.DataChunk]) -> None:
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(
                schema.call_data.insert(),
                [
                    dict(
                        function_call_id=function_call_id,
                        direction=direction,
                        chunk=chunk.SerializeToString(),
                        chunk_index=chunk.index,
                        created_at=now,
                        blob_id=chunk.data_blob_id or None,
                    )
                    for chunk in chunks
                ],
            )
        self.notifier.notify(data_key(function_call_id, direction))

    def drop_data(self, function_call_id: str) -> None:
        """Forget a call's data channels (a finished web request's bodies)."""
        with self.engine.begin() as connection:
            connection.execute(DROP_DATA, {"b_call_id": function_call_id})

    def data_after(
        self, function_call_id: str, direction: str, last_index: int, limit: int = 64
    ) -> list[api_pb2.DataChunk]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                DATA_AFTER,
                {
                    "b_call_id": function_call_id,
                    "b_direction": direction,
                    "b_after": last_index,
                    "b_limit": limit,
                },
            ).all()
        chunks = []
        seen: set[int] = set()
        for row in rows:
            chunk = api_pb2.DataChunk()
            chunk.ParseFromString(row.chunk)
            if chunk.index not in seen:  # a retried put may store a chunk twice
                seen.add(chunk.index)
                chunks.append(chunk)
        return chunks

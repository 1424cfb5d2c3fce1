"""The input queue's statements on the per-input hot path (claims, outputs, counts, data
channels), built once: building a statement costs more than running it. Used by
services/calls.py, which owns the queue."""

from __future__ import annotations

import sqlalchemy as sa

from homeport.server.store import schema

PENDING, CLAIMED, DONE = "pending", "claimed", "done"

_inputs = schema.inputs
CLAIM_CANDIDATES = (
    sa.select(
        _inputs.c.id,
        _inputs.c.function_call_id,
        _inputs.c.idx,
        _inputs.c.attempt,
        _inputs.c.payload,
        _inputs.c.created_at,
    )
    .where(
        _inputs.c.function_id == sa.bindparam("b_function_id"),
        _inputs.c.state == PENDING,
        _inputs.c.not_before <= sa.bindparam("b_now"),
    )
    .order_by(_inputs.c.created_at)
    .limit(sa.bindparam("b_limit"))
    .with_for_update(skip_locked=True)
)
# The same on SQLite, which keeps no statistics: left to itself it picks ix_inputs_runnable
# and sorts every pending input of every function at each claim (measured: 5 ms a claim
# with 6,000 queued). Walking the claim-order index finds the first runnable one at once.
# (SQLAlchemy renders no index hints for SQLite, hence the text.)
CLAIM_CANDIDATES_SQLITE = sa.text(
    "SELECT id, function_call_id, idx, attempt, payload, created_at"
    " FROM inputs INDEXED BY ix_inputs_claim_order"
    f" WHERE function_id = :b_function_id AND state = '{PENDING}' AND not_before <= :b_now"
    " ORDER BY created_at LIMIT :b_limit"
)
TAKE = (
    _inputs.update()
    .where(_inputs.c.id == sa.bindparam("b_input_id"), _inputs.c.state == PENDING)
    .values(state=CLAIMED, task_id=sa.bindparam("b_task_id"), claimed_at=sa.bindparam("b_now"))
)
RUNNING_INPUT = (
    sa.select(
        _inputs.c.function_call_id,
        _inputs.c.function_id,
        _inputs.c.idx,
        _inputs.c.attempt,
        _inputs.c.claimed_at,
        schema.function_calls.c.cancelled,
    )
    .join(schema.function_calls, schema.function_calls.c.id == _inputs.c.function_call_id)
    .where(_inputs.c.id == sa.bindparam("b_input_id"), _inputs.c.state == CLAIMED)
)
RUNNING_INPUT_OF_TASK = RUNNING_INPUT.where(_inputs.c.task_id == sa.bindparam("b_task_id"))
FINISH = (
    _inputs.update()
    .where(_inputs.c.id == sa.bindparam("b_input_id"), _inputs.c.state == CLAIMED)
    .values(state=DONE, finished_at=sa.bindparam("b_now"), status=sa.bindparam("b_status"))
    .returning(
        _inputs.c.function_call_id,
        _inputs.c.function_id,
        _inputs.c.idx,
        _inputs.c.attempt,
        _inputs.c.claimed_at,
    )
)
FINISH_OF_TASK = FINISH.where(_inputs.c.task_id == sa.bindparam("b_task_id"))
INSERT_OUTPUT = schema.outputs.insert()
INSERT_CALL = schema.function_calls.insert()
INSERT_INPUTS = schema.inputs.insert()
_calls_table = schema.function_calls
CALL_IDENTITY = sa.select(
    _calls_table.c.id,
    _calls_table.c.workspace_id,
    _calls_table.c.function_id,
    _calls_table.c.app_id,
    _calls_table.c.invocation_type,
).where(_calls_table.c.id == sa.bindparam("b_call_id"))
_outputs = schema.outputs
OUTPUTS_AFTER = (
    sa.select(
        _outputs.c.seq,
        _outputs.c.input_id,
        _outputs.c.idx,
        _outputs.c.result,
        _outputs.c.data_format,
        _outputs.c.retry_count,
    )
    .where(_outputs.c.function_call_id == sa.bindparam("b_call_id"), _outputs.c.seq > sa.bindparam("b_after"))
    .order_by(_outputs.c.seq)
    .limit(sa.bindparam("b_limit"))
)
OUTPUTS_IN_RANGE = OUTPUTS_AFTER.where(
    _outputs.c.idx.between(sa.bindparam("b_first_idx"), sa.bindparam("b_last_idx"))
)
DELETE_OUTPUTS = _outputs.delete().where(_outputs.c.seq.in_(sa.bindparam("b_seqs", expanding=True)))
UNFINISHED = sa.select(sa.func.count()).where(
    _inputs.c.function_call_id == sa.bindparam("b_call_id"), _inputs.c.state != DONE
)
CANCELLED_CLAIMS = (
    sa.select(_inputs.c.id, _inputs.c.task_id)
    .join(_calls_table, _calls_table.c.id == _inputs.c.function_call_id)
    .where(_inputs.c.state == CLAIMED, _calls_table.c.cancelled.is_(True))
)
INPUT_COUNT = sa.select(sa.func.count()).where(_inputs.c.function_call_id == sa.bindparam("b_call_id"))
_data = schema.call_data
DATA_AFTER = (
    sa.select(_data.c.chunk)
    .where(
        _data.c.function_call_id == sa.bindparam("b_call_id"),
        _data.c.direction == sa.bindparam("b_direction"),
        _data.c.chunk_index > sa.bindparam("b_after"),
    )
    .order_by(_data.c.chunk_index, _data.c.seq)
    .limit(sa.bindparam("b_limit"))
)
DROP_DATA = _data.delete().where(_data.c.function_call_id == sa.bindparam("b_call_id"))

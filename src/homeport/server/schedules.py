"""modal.Period and modal.Cron schedules: each due schedule enqueues one call of its
function (no arguments), and its next time is set before the call is made, so a restart
never fires one twice."""

from __future__ import annotations

import logging
import pickle
import time

from modal_proto import api_pb2

from homeport.server.services import functions as catalog

log = logging.getLogger("homeport.scheduler")


def fire_due(apps, calls) -> int:  # type: ignore[no-untyped-def]
    """Enqueue a call for every schedule that is due; returns how many fired."""
    now = time.time()
    fired = 0
    for function in apps.due_schedules(now):
        definition = function.definition
        if definition is None:
            continue
        next_at = catalog.next_schedule_time(definition.schedule, now)
        apps.set_schedule_next(function.id, next_at or now + 3600)
        app = apps.get("", function.app_id)
        call_id = calls.create_call(
            app.workspace_id,
            function.id,
            function.app_id,
            api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC,
            api_pb2.FUNCTION_CALL_TYPE_UNARY,
        )
        payload = api_pb2.FunctionInput(args=pickle.dumps(((), {})), data_format=api_pb2.DATA_FORMAT_PICKLE)
        calls.enqueue(call_id, function.id, [(0, payload)])
        log.info("schedule fired for %s (%s)", definition.function_name, call_id)
        fired += 1
    return fired

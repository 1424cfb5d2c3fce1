"""Deadlines of running containers, checked twice a second: an input past its function's
timeout fails and its container is replaced; an idle container past its scaledown window
is stopped (unless min/buffer containers need it); a container asked to stop is
interrupted, then killed, if it outlives its grace; inputs of cancelled calls end."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from modal_proto import api_pb2

from homeport.server.services.logs import FD_INFO

if TYPE_CHECKING:
    from homeport.server.scheduler import Scheduler

TIMEOUT = api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT
# A container asked to stop is interrupted after this, and killed after twice this.
STOP_GRACE_S = 10.0


class Deadlines:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def enforce(self) -> None:
        """One pass over every container: timed-out inputs, idle containers, stops past
        their grace, inputs of cancelled calls."""
        scheduler = self.scheduler
        now = time.monotonic()
        cancelled = scheduler.calls.cancelled_claims() if scheduler.containers else {}
        for running in list(scheduler.containers.values()):
            timeout = running.definition.timeout_secs
            for input_id, claimed_at in list(running.inputs.items()):
                if now - claimed_at > timeout:
                    running.inputs.pop(input_id, None)
                    message = f"{running.definition.function_name} timed out after {timeout} s"
                    scheduler.logs.append(
                        running.app_id, running.task_id, running.function_id, FD_INFO, message + "\n"
                    )
                    scheduler.finish_input(
                        input_id,
                        running.function_id,
                        api_pb2.GenericResult(
                            status=TIMEOUT, exception=f"Function timed out after {timeout} seconds"
                        ),
                        running.task_id,
                    )
                    # The client cannot interrupt one input reliably: replace the container.
                    scheduler.request_stop(running, f"input {input_id} timed out")
                    running.node.kill(running.task_id)
            idle = (
                running.ready
                and not running.stop_reason
                and not running.inputs
                and now - running.last_active > running.idle_timeout_s
            )
            if idle and scheduler.scaler.may_scale_down(running):
                scheduler.request_stop(running, "idle")
            if running.stop_requested_at is not None:
                waited = now - running.stop_requested_at
                if waited > STOP_GRACE_S * 2:
                    running.node.kill(running.task_id)
                elif waited > STOP_GRACE_S:
                    running.node.interrupt(running.task_id)
            for input_id in cancelled.get(running.task_id, ()):
                running.inputs.pop(input_id, None)
                scheduler.finish_cancelled(input_id, running)

"""The scheduler: the control plane's side of containers. It decides when a function
needs another container and what that container runs (definition, image, mounts,
secrets, credential, volumes), keeps the books of which inputs each container holds,
enforces input deadlines, schedules and scale-down, and settles the inputs of containers
that end.

The machines themselves (runtime, GPUs, memory, processes, disk) belong to node agents
(agent/node.py), reached only through the narrow `Node` interface (server/nodes.py):
reserve, start, interrupt, kill, wait; placement chooses the node of each container. Everything another node would need to know (inputs, their state, tasks)
lives in the database. Background loops run in one TaskGroup owned by the server, so an
error in any of them is seen and logged rather than vanishing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport import ids
from homeport.agent.node import ContainerExit
from homeport.agent.runtime import ContainerStartError, describe_exit
from homeport.config import Limits
from homeport.server import schedules
from homeport.server.auth import hash_secret
from homeport.server.deadlines import Deadlines
from homeport.server.nodes import Node, NodeLost, Placement
from homeport.server.notify import poll
from homeport.server.orders import OrderBuilder, StartRefused
from homeport.server.running import (
    BuildStep,
    RunningContainer,
    StartBackoff,
    container_log_writer,
    redactor,
    stop_key,
    usage_record,
)
from homeport.server.scaling import DEFAULT_IDLE_S, Scaler
from homeport.server.services import autoscaling
from homeport.server.services import functions as catalog
from homeport.server.services.apps import AppService
from homeport.server.services.calls import CLAIMED, PENDING, CallService, StoredOutput, outputs_key, queue_key
from homeport.server.services.logs import FD_INFO, LogService
from homeport.server.services.usage import UsageService
from homeport.server.store import db, schema

log = logging.getLogger("homeport.scheduler")

FAILURE = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
TERMINATED = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED
INIT_FAILURE = api_pb2.GenericResult.GENERIC_STATUS_INIT_FAILURE

DEFAULT_TIMEOUT_S = 300
# After asking a container to stop (kill switch, then SIGINT), how long before SIGKILL.
# Passes start at least this far apart: wake-ups closer together are served by one pass: a client spawning
# thousands of calls wakes placement at each, and a pass reads the whole queue's counts.
# A wake after a quiet spell is served at once (a cold call waits for no gap). Counting
# a deep backlog takes long and blocks the loop: then passes are spaced out further, so
# counting takes at most about a tenth of the loop's time.
PLACEMENT_MIN_GAP_S = 0.05
PLACEMENT_MAX_SHARE = 0.1
STDERR_TAIL_BYTES = 2000


class Scheduler:
    def __init__(
        self,
        engine: sa.Engine,
        notifier,  # type: ignore[no-untyped-def]
        apps: AppService,
        calls: CallService,
        logs: LogService,
        placement: Placement,
        orders: OrderBuilder,
        images,  # type: ignore[no-untyped-def]
        max_containers: int,
        limits: Limits,
        storage,  # type: ignore[no-untyped-def]
        queues,  # type: ignore[no-untyped-def]
        volumes,  # type: ignore[no-untyped-def]
        usage: UsageService,
    ) -> None:
        self.engine = engine
        self.notifier = notifier
        self.apps = apps
        self.calls = calls
        self.logs = logs
        self.placement = placement
        self.orders = orders
        self.images = images
        self.max_containers = max_containers
        self.forget_credential: Callable[[str], None] = lambda task_id: None
        # (task id, secret, workspace, app, function) of a credential just made
        self.remember_credential: Callable[[str, str, str, str, str], object] = lambda *credential: None
        self.limits = limits
        self.storage = storage
        self.queues = queues
        self.volumes = volumes
        self.usage = usage
        self.containers: dict[str, RunningContainer] = {}
        # Containers being started: set once recorded in `containers` (or failed).
        self._launching: dict[str, asyncio.Event] = {}
        self.builds: dict[str, BuildStep] = {}  # function id -> the run_function step it is running
        self._nodes_used: set[str] = set()  # nodes this server has started a container on
        self.start_backoff = StartBackoff()
        self.scaler = Scaler(self)
        self.deadlines = Deadlines(self)
        self.server_id: str | None = None  # this replica, in cluster mode
        # Whether this replica places a function's containers (cluster mode: replicas.py).
        self.is_home: Callable[[str], bool] = lambda function_id: True
        self._wake = asyncio.Event()
        self._last_placement = 0.0  # monotonic time the last placement pass began
        self._tasks: asyncio.TaskGroup | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: containers of the previous run are gone (they die with the
        server). Their running inputs go back to the queue without using the function's
        retries: a platform fault is not the user's failure."""
        t = schema.tasks
        with self.engine.begin() as connection:
            connection.execute(
                t.update()
                .where(t.c.state != "stopped")
                .values(state="stopped", stopped_at=time.time(), stop_reason="the server restarted")
            )
        requeued = self.calls.requeue_claimed()
        if requeued:
            log.info(
                "%d input(s) running when the server stopped are queued again (their retries are not used)",
                requeued,
            )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._tasks = group
            group.create_task(self._loop("placement", self.scaler.place, self._until_placement_due))
            # Warm containers on a tick of their own: placement wakes on every call, and this
            # pass (a query and a definition per warm function) has no place on that path.
            group.create_task(
                self._loop("warm containers", self.scaler.keep_warm, lambda: asyncio.sleep(1.0))
            )
            group.create_task(self._loop("timeouts", self.deadlines.enforce, lambda: asyncio.sleep(0.5)))
            group.create_task(self._loop("schedules", self._run_schedules, lambda: asyncio.sleep(1.0)))
            group.create_task(self._loop("housekeeping", self._housekeeping, lambda: asyncio.sleep(10.0)))

    async def _loop(self, name: str, step, pause) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                await step()
            except sa.exc.OperationalError as error:
                log.warning(
                    "scheduler loop %s: the database is unreachable (%s); continuing", name, error.orig
                )
            except Exception:
                log.exception("scheduler loop %s failed; continuing", name)
            try:
                await pause()
            except Exception as error:  # the pause may ask the database too
                log.warning("scheduler loop %s: %r; continuing", name, error)
                await asyncio.sleep(1.0)

    async def _until_placement_due(self) -> None:
        """Place again when woken, when a retry's backoff ends, or after a second."""
        # Start to start; a pass blocks the loop while it counts the queue.
        interval_s = max(PLACEMENT_MIN_GAP_S, self.scaler.count_s / PLACEMENT_MAX_SHARE)
        wait = 1.0
        next_retry = self.calls.next_retry_at()
        if next_retry is not None:
            wait = min(wait, max(next_retry - time.time(), 0.01))
        try:
            async with asyncio.timeout(wait):  # not wait_for: no extra task, no extra turn
                await self._wake.wait()
        except TimeoutError:
            pass
        since_last = time.monotonic() - self._last_placement
        if since_last < interval_s:
            await asyncio.sleep(interval_s - since_last)
        self._wake.clear()
        self._last_placement = time.monotonic()

    def wake(self) -> None:
        self._wake.set()

    def inputs_queued(self, function_id: str, count: int) -> None:
        """New inputs: containers of this node with room take them by themselves (the queue
        notifies them); placement is woken only when they cannot hold them all. It also
        runs every second whatever happens, so nothing waits on this shortcut."""
        room = sum(c.free_slots for c in self.containers.values() if c.function_id == function_id)
        if room < count:
            self.wake()

    async def run_build_function(
        self,
        workspace_id: str,
        app_id: str,
        function_id: str,
        function_input: api_pb2.FunctionInput,
        upper_dir: Path,
        on_output: Callable[[str], None],
    ) -> api_pb2.GenericResult:
        """Run one input of a build function in a container whose writable layer is
        `upper_dir/fs`; once it answered, stop the container and wait until it exited, so
        the layer is complete. Returns the input's result."""
        self.builds[function_id] = BuildStep(upper_dir, on_output)
        try:
            call_id = self.calls.create_call(
                workspace_id,
                function_id,
                app_id,
                api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC,
                api_pb2.FUNCTION_CALL_TYPE_UNARY,
            )
            self.calls.enqueue(call_id, function_id, [(0, function_input)])
            self.wake()
            outputs: list[StoredOutput] = []
            while not outputs:
                outputs = await poll(
                    self.notifier,
                    [outputs_key(call_id)],
                    lambda: self.calls.outputs_after(call_id, 0, 1),
                    60.0,
                )
            for running in [c for c in self.containers.values() if c.function_id == function_id]:
                self.request_stop(running, "its image build step finished")
            while any(c.function_id == function_id for c in self.containers.values()):
                await asyncio.sleep(0.05)
            return outputs[0].result
        finally:
            self.builds.pop(function_id, None)

    async def shutdown(self) -> None:
        """Stop this server's containers (each node waits, briefly, until they have exited)."""
        nodes = {
            id(node): node for node in [*self.placement.all(), self.placement.builds] if node is not None
        }
        await asyncio.gather(*(node.shutdown() for node in nodes.values()), return_exceptions=True)

    async def start(
        self,
        function: catalog.FunctionRow,  # type: ignore[name-defined]
        definition: api_pb2.Function,
        params: bytes,
        app: Any,  # the function's app row: its workspace and environment
        task_id: str,
        node: Node,
        gpu_indices: list[int],
        reason: str,
    ) -> None:
        """Start a container in the room reserved for `task_id`; whatever goes wrong, the
        reservation is given back and the failure recorded (never left held)."""
        launched = self._launching[task_id] = asyncio.Event()
        try:
            await self._launch(function, definition, params, app, task_id, node, gpu_indices, reason)
        except Exception as error:
            if task_id in self.containers:
                raise  # started: its watcher owns the reservation now
            log.exception("container %s for %s could not be started", task_id, function.id)
            self._fail_start(function, task_id, f"could not start a container: {error}", node)
        finally:
            self._launching.pop(task_id, None)
            launched.set()

    async def started(self, task_id: str) -> RunningContainer | None:
        """The container, once its start is recorded. A container can call in before its
        node has answered the start: one restored from a memory snapshot asks for inputs
        within milliseconds of its restore."""
        launching = self._launching.get(task_id)
        if launching is not None:
            await launching.wait()
        return self.containers.get(task_id)

    async def _launch(
        self,
        function: catalog.FunctionRow,  # type: ignore[name-defined]
        definition: api_pb2.Function,
        params: bytes,
        app: Any,  # the function's app row: its workspace and environment
        task_id: str,
        node: Node,
        gpu_indices: list[int],
        reason: str,
    ) -> None:
        if function.id in self.builds and any(c.function_id == function.id for c in self.containers.values()):
            node.release(task_id)
            return  # a run_function step: exactly one container writes its layer
        workspace_id, environment_name = app.workspace_id, app.environment_name
        secret = ids.new_secret()
        with self.engine.begin() as connection:
            connection.execute(
                schema.tasks.insert().values(
                    id=task_id,
                    workspace_id=workspace_id,
                    app_id=function.app_id,
                    function_id=function.id,
                    secret_hash=hash_secret(secret),
                    state="starting",
                    created_at=time.time(),
                    node_id=node.node_id,
                    server_id=self.server_id,
                )
            )
        self.remember_credential(task_id, secret, workspace_id, function.app_id, function.id)
        build_step = self.builds.get(function.id)
        # ephemeral_disk= is a size-limited file system already; a build step's layer is the image's
        disk_limit_mib = (
            0 if definition.resources.ephemeral_disk_mb or build_step else self.limits.container_disk_mib
        )
        try:
            order, secret_values = await self.orders.build(
                function,
                definition,
                params,
                environment_name,
                workspace_id,
                task_id,
                secret,
                gpu_indices,
                build_step.upper_dir if build_step is not None else None,
                disk_limit_mib,
                memory_snapshots=(
                    definition.checkpointing_enabled
                    and build_step is None
                    and node.inventory().memory_snapshots
                ),
            )
        except StartRefused as error:
            self._fail_start(function, task_id, str(error), node)
            return
        timeout = definition.timeout_secs or DEFAULT_TIMEOUT_S
        running: RunningContainer | None = None

        redact = redactor(secret_values.values())
        write_log = container_log_writer(
            self.logs, function.app_id, task_id, function.id, self.limits.container_log_bytes
        )

        def on_output(fd: int, text: str) -> None:
            text = redact(text)
            if build_step is not None:
                build_step.on_output(text)
            if running is not None and fd == 2:
                running.stderr_tail.append(text)
            write_log(fd, text)

        if node.node_id not in self._nodes_used and function.id not in self.builds:
            self._nodes_used.add(node.node_id)
            log.info(
                "starting the first container on %s (image files and client package are made once per node)",
                node.node_id,
            )
        try:
            await node.start(order, on_output)
        except NodeLost as error:
            # Not the function's doing: its inputs stay queued for another node.
            log.warning("container %s: %s", task_id, error)
            self._stop_task(task_id, str(error))
            self.wake()
            return
        except Exception as error:
            message = (
                str(error)
                if isinstance(error, ContainerStartError)
                else f"could not start a container on node {node.node_id}: {error!r}"
            )
            self._fail_start(function, task_id, message, node)
            return
        running = RunningContainer(
            task_id=task_id,
            function_id=function.id,
            app_id=function.app_id,
            workspace_id=workspace_id,
            definition=definition,
            started_at=time.monotonic(),
            max_inputs=max(definition.max_concurrent_inputs, 1),
            idle_timeout_s=autoscaling.autoscaling(definition, DEFAULT_IDLE_S).scaledown_window_s,
        )
        running.definition.timeout_secs = timeout
        running.node = node
        running.volume_ids = {m.volume_id for m in definition.volume_mounts}
        running.gpu_devices = gpu_indices
        running.build_step = build_step is not None
        self.containers[task_id] = running
        log.info(
            "started container %s for %s (%s) on %s: %s",
            task_id,
            definition.function_name,
            function.id,
            node.node_id,
            reason,
        )
        assert self._tasks is not None
        self._tasks.create_task(self._watch(running))

    def _stop_task(self, task_id: str, message: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                schema.tasks.update()
                .where(schema.tasks.c.id == task_id)
                .values(state="stopped", stop_reason=message, stopped_at=time.time())
            )
        self.forget_credential(task_id)

    def _fail_start(self, function, task_id: str, message: str, node: Node) -> None:  # type: ignore[no-untyped-def]
        node.release(task_id)
        log.warning("container %s for %s failed to start: %s", task_id, function.id, message)
        self._stop_task(task_id, message)
        self.logs.append(function.app_id, task_id, function.id, FD_INFO, message + "\n")
        self.fail_pending(function.id, api_pb2.GenericResult(status=INIT_FAILURE, exception=message))

    async def commit_volume(self, task_id: str, volume_id: str) -> None:
        """Record what a container changed in its copy of a volume (its node stores the contents)."""
        running = self.containers.get(task_id)
        if running is None or volume_id not in running.volume_ids:
            return
        async with running.volume_locks.setdefault(volume_id, asyncio.Lock()):
            await self._commit(running, volume_id)

    async def _commit(self, running: RunningContainer, volume_id: str) -> None:
        changes = await running.node.commit_volume(running.task_id, volume_id)
        if changes is not None:
            self.volumes.record(volume_id, *changes)

    async def reload_volume(self, task_id: str, volume_id: str) -> None:
        """Commit the container's own changes, then show it the latest committed state."""
        running = self.containers.get(task_id)
        if running is None or volume_id not in running.volume_ids:
            return
        async with running.volume_locks.setdefault(volume_id, asyncio.Lock()):
            await self._commit(running, volume_id)
            committed = self.volumes.entries(volume_id)
            await running.node.refresh_volume(task_id, volume_id, list(committed.values()))

    async def _watch(self, running: RunningContainer) -> None:
        """Wait for a container's end, then settle its books and inputs; while the database
        is unreachable (a PostgreSQL restart), settling waits for it rather than being lost."""
        ended = await running.node.wait(running.task_id)
        try:
            await db.once_the_database_answers(
                lambda: self._settle(running, ended), f"the end of container {running.task_id}"
            )
        except Exception:  # one container's books must not take the scheduler down with them
            log.exception("settling the end of container %s failed", running.task_id)

    def _settle(self, running: RunningContainer, ended: ContainerExit) -> None:
        code = ended.code
        self.containers.pop(running.task_id, None)
        runtime_reason = ended.reason
        if running.stop_reason is None and ended.lost:
            # The platform lost it (its zygote died): its inputs run again elsewhere, retries untouched.
            running.stop_reason = runtime_reason
        reason = running.stop_reason or runtime_reason or describe_exit(code)
        if not running.ready and running.stop_reason is None:
            delay = self.start_backoff.failed(running.function_id)
            if delay:
                log.warning(
                    "containers for %s (%s) have stopped before they were ready %d times in a row; "
                    "the next one starts in %.0f s",
                    running.definition.function_name,
                    running.function_id,
                    self.start_backoff.failures(running.function_id),
                    delay,
                )
        with self.engine.begin() as connection:
            connection.execute(
                schema.tasks.update()
                .where(schema.tasks.c.id == running.task_id)
                .values(state="stopped", exit_code=code, stop_reason=reason, stopped_at=time.time())
            )
        # After the update: a check that read the row before it cannot keep the credential.
        self.forget_credential(running.task_id)
        log.info("container %s stopped: %s", running.task_id, reason)
        self.usage.record(usage_record(running, ended))
        orphans = self.calls.claimed_by(running.task_id)
        if running.init_failure is not None:
            # Raised in import or @enter: every queued input would fail the same way.
            failure = api_pb2.GenericResult()
            failure.CopyFrom(running.init_failure)
            failure.status = INIT_FAILURE
            self.fail_pending(running.function_id, failure)
        elif code != 0 and running.stop_reason is None:
            tail = "".join(running.stderr_tail)[-STDERR_TAIL_BYTES:].strip()
            message = f"the container for {running.definition.function_name} {describe_exit(code)}"
            if runtime_reason:
                message = f"{runtime_reason} and was stopped ({running.definition.function_name})"
                tail = ""
            self.logs.append(running.app_id, running.task_id, running.function_id, FD_INFO, message + "\n")
            result = api_pb2.GenericResult(
                status=FAILURE, exception=message + (f"; its last output:\n{tail}" if tail else "")
            )
            if orphans:
                for row in orphans:
                    self.finish_input(row.id, running.function_id, result, running.task_id)
            elif not running.hello or not running.inputs:
                # It died before taking any input: starting another would crash the same way.
                result.status = INIT_FAILURE
                self.fail_pending(running.function_id, result)
            orphans = []
        for row in orphans:
            # Stopped by us for a reason that is not this input's fault (another input's
            # timeout, scale-down): it runs again elsewhere, without using a retry.
            self._requeue(row.id, running.function_id, running.task_id)
        self.wake()

    def retry_policy(self, function_id: str) -> api_pb2.FunctionRetryPolicy | None:
        """The retry policy inputs of this function (or bound variant) run under."""
        definition, _ = catalog.effective_definition(self.apps, self.apps.function(function_id))
        return definition.retry_policy if definition.HasField("retry_policy") else None

    def finish_input(
        self, input_id: str, function_id: str, result: api_pb2.GenericResult, task_id: str | None = None
    ) -> None:
        policy = self.retry_policy(function_id)
        self.calls.finish(input_id, result, api_pb2.DATA_FORMAT_PICKLE, policy, task_id=task_id)

    def _requeue(self, input_id: str, function_id: str, task_id: str) -> None:
        self.return_input(task_id, input_id)
        self.notifier.notify(queue_key(function_id), limit=1)

    def fail_pending(self, function_id: str, result: api_pb2.GenericResult) -> None:
        """Fail every queued input of a function whose containers cannot start."""
        claimer = f"failed-start:{function_id}"
        for claimed in self.calls.claim(function_id, claimer, limit=100_000):
            self.calls.finish(claimed.input_id, result, api_pb2.DATA_FORMAT_PICKLE, None, task_id=claimer)

    # --- container-facing events ----------------------------------------------------------

    def container(self, task_id: str) -> RunningContainer | None:
        return self.containers.get(task_id)

    def task_record(self, task_id: str) -> sa.Row | None:
        """A container's row (any node's, running or stopped)."""
        t = schema.tasks
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(t.c.id, t.c.workspace_id, t.c.app_id, t.c.state, t.c.exit_code, t.c.stop_reason,
                          t.c.created_at, t.c.stopped_at).where(t.c.id == task_id)
            ).first()  # fmt: skip

    def on_checkpoint(self, task_id: str) -> None:
        """ContainerCheckpoint: its node takes its memory snapshot (agent/memory_snapshots.py)."""
        running = self.containers.get(task_id)
        if running is not None and running.node is not None:
            running.node.checkpoint(task_id)

    def on_hello(self, task_id: str) -> None:
        running = self.containers.get(task_id)
        if running is not None:
            running.hello = True
            self.wake()
            with self.engine.begin() as connection:
                connection.execute(
                    schema.tasks.update().where(schema.tasks.c.id == task_id).values(state="running")
                )

    def on_ready(self, task_id: str) -> None:
        """The container asks for inputs: its start-up (imports, @enter) is over."""
        running = self.containers.get(task_id)
        if running is not None and not running.ready:
            running.ready = True
            running.last_active = time.monotonic()
            self.start_backoff.succeeded(running.function_id)

    def on_claimed(self, task_id: str, input_ids: list[str]) -> None:
        running = self.containers.get(task_id)
        if running is not None:
            now = time.monotonic()
            for input_id in input_ids:
                running.inputs[input_id] = now
            running.last_active = now

    def return_input(self, task_id: str, input_id: str) -> None:
        """An input whose hand-over to the container failed goes back to the queue."""
        running = self.containers.get(task_id)
        if running is not None:
            running.inputs.pop(input_id, None)
        i = schema.inputs
        with self.engine.begin() as connection:
            connection.execute(
                i.update()
                .where(i.c.id == input_id, i.c.state == CLAIMED, i.c.task_id == task_id)
                .values(state=PENDING, task_id=None)
            )
        self.wake()

    def on_output(self, task_id: str, input_id: str) -> None:
        # No placement pass needed: the container asks for its next input itself.
        running = self.containers.get(task_id)
        if running is not None:
            running.inputs.pop(input_id, None)
            running.last_active = time.monotonic()

    def on_task_result(self, task_id: str, result: api_pb2.GenericResult) -> None:
        running = self.containers.get(task_id)
        if running is not None and result.status != api_pb2.GenericResult.GENERIC_STATUS_SUCCESS:
            running.init_failure = result

    def retire(self, function_ids: set[str], reason: str) -> None:
        """Stop taking inputs in the containers of these functions (and their bound variants);
        their new version starts without waiting out the old one's start-up failures."""
        for function_id in function_ids:
            self.start_backoff.succeeded(function_id)
        for running in list(self.containers.values()):
            parent = self.apps.function(running.function_id).parent_id
            if running.function_id in function_ids or parent in function_ids:
                self.request_stop(running, reason)

    def request_stop(self, running: RunningContainer, reason: str, interrupt: bool = False) -> None:
        """The container takes no more inputs and is asked to stop (its next input request
        answers with the kill switch); `interrupt` also sends it SIGINT at once."""
        if running.stop_reason is None:
            running.stop_reason = reason
            running.stop_requested_at = time.monotonic()
            self.notifier.notify(stop_key(running.task_id))
        if interrupt:
            running.node.interrupt(running.task_id)

    def finish_cancelled(self, input_id: str, running: RunningContainer) -> None:
        """End a cancelled input as TERMINATED and interrupt the container running it."""
        self.calls.finish(
            input_id,
            api_pb2.GenericResult(status=TERMINATED, exception="the function call was cancelled"),
            api_pb2.DATA_FORMAT_PICKLE,
            None,
            task_id=running.task_id,
        )
        self.request_stop(running, "its input was cancelled", interrupt=True)

    async def stop_app(self, app_id: str, reason: str) -> None:
        self.apps.stop(app_id)
        result = api_pb2.GenericResult(status=TERMINATED, exception=f"app {app_id} stopped: {reason}")
        for function in self.apps.app_functions(app_id):
            self.fail_pending(function.id, result)
        for running in list(self.containers.values()):
            if running.app_id == app_id:
                for input_id in list(running.inputs):
                    running.inputs.pop(input_id, None)
                    self.calls.finish(
                        input_id, result, api_pb2.DATA_FORMAT_PICKLE, None, task_id=running.task_id
                    )
                self.request_stop(running, reason, interrupt=True)

    async def cancel_call(self, function_call_id: str, terminate_containers: bool) -> None:
        for task_id in self.calls.cancel(function_call_id):
            running = self.containers.get(task_id)
            if running is not None:
                for input_id in self.calls.cancelled_inputs_of(task_id):
                    running.inputs.pop(input_id, None)
                    self.finish_cancelled(input_id, running)

    def running_task_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for running in self.containers.values():
            counts[running.app_id] = counts.get(running.app_id, 0) + 1
        return counts

    # --- schedules and housekeeping --------------------------------------------------------

    async def _run_schedules(self) -> None:
        if schedules.fire_due(self.apps, self.calls):
            self.wake()

    async def _housekeeping(self) -> None:
        for app_id in self.apps.stale_ephemeral_apps():
            await self.stop_app(app_id, "its client stopped sending heartbeats")
        self.storage.expire()
        self.queues.expire()

"""Autoscaling: how many containers each function needs and where they go.

`place` starts containers for queued inputs (as many as the queue needs beyond the free
slots, within the function's and the server's limits, on the node placement chooses);
`keep_warm` keeps min_containers and buffer_containers up; `may_scale_down` tells whether
an idle container may stop; `prewarm` gets zygotes ready on every node when an app is
published. Starting, stopping and the books of running containers are
the scheduler's (server/scheduler.py).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from modal_proto import api_pb2

from homeport import ids
from homeport.agent.node import ZygoteOrder
from homeport.server.nodes import Node
from homeport.server.orders import interpreter_environment
from homeport.server.running import RunningContainer, memory_request_mib
from homeport.server.services import autoscaling
from homeport.server.services import functions as catalog
from homeport.server.services.calls import queue_key

if TYPE_CHECKING:
    from homeport.server.scheduler import Scheduler

log = logging.getLogger("homeport.scheduler")

INIT_FAILURE = api_pb2.GenericResult.GENERIC_STATUS_INIT_FAILURE
DEFAULT_IDLE_S = 60
MAX_STARTING = max(os.cpu_count() or 1, 1)
# An idle container keeps its GPU at least this long before queued work may claim it.
GPU_IDLE_GRACE_S = 2.0


class Scaler:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.count_s = 0.0  # how long the last pass took to count the queue

    async def place(self) -> None:
        started = time.perf_counter()
        pending = self.scheduler.calls.pending_counts()
        self.count_s = time.perf_counter() - started
        for function_id, count in pending.items():
            if function_id not in self.scheduler.builds and not self.scheduler.is_home(function_id):
                continue  # another replica places this function's containers
            mine = [
                c
                for c in self.scheduler.containers.values()
                if c.function_id == function_id and not c.stop_reason
            ]
            free = sum(c.free_slots for c in mine)
            if free:
                # Inputs whose retry delay just ended notify nobody by themselves:
                # wake the containers polling for this function.
                self.scheduler.notifier.notify(queue_key(function_id), limit=count)
            if self.scheduler.start_backoff.waiting(function_id):
                continue
            try:
                function, definition, params, app = self.resolve(function_id)
            except Exception as error:
                log.warning("cannot place inputs of %s: %s", function_id, error)
                continue
            if not app.live:
                continue
            if definition.is_builder_function and function.id not in self.scheduler.builds:
                # An Image.run_function step: only the replica building the image runs it,
                # on its own machine, where the step's writable layer becomes the layer.
                continue
            per_container = max(definition.max_concurrent_inputs, definition.batch_max_size, 1)
            wanted = -(-max(count - free, 0) // per_container)
            limit = (
                autoscaling.autoscaling(definition, DEFAULT_IDLE_S).max_containers
                or self.scheduler.max_containers
            )
            wanted = min(
                wanted, limit - len(mine), self.scheduler.max_containers - len(self.scheduler.containers)
            )
            gpu_options = self._gpu_options(function)
            needed = memory_request_mib(definition)
            refusal = self.scheduler.placement.refusal(needed, gpu_options)
            if refusal is not None:
                self.scheduler.fail_pending(
                    function.id, api_pb2.GenericResult(status=INIT_FAILURE, exception=refusal)
                )
                continue
            for _ in range(max(wanted, 0)):
                task_id = ids.new_id("task")
                # Scale out only onto idle cores while containers of this function run (they
                # drain the queue meanwhile).
                placed = await self._reserve(
                    task_id,
                    needed,
                    gpu_options,
                    avoid_saturated=bool(mine),
                    build=function.id in self.scheduler.builds,
                )
                if placed is None:
                    # No room: the inputs wait in the queue (memory is never oversubscribed),
                    # and an idle container holding a GPU they need is asked to make room.
                    if gpu_options:
                        self._free_idle_gpus(function.id)
                    break
                reason = f"{count} input(s) queued, {free} free slot(s)"
                if function.id in self.scheduler.builds:
                    reason = "an image build step"
                node, gpu_indices = placed
                await self.scheduler.start(
                    function, definition, params, app, task_id, node, gpu_indices, reason
                )

    def _starting(self) -> dict[str, int]:
        """Containers not yet up, per node."""
        counts: dict[str, int] = {}
        for c in self.scheduler.containers.values():
            if not c.hello and not c.stop_reason and c.node is not None:
                counts[c.node.node_id] = counts.get(c.node.node_id, 0) + 1
        return counts

    async def _reserve(
        self,
        task_id: str,
        memory_mib: int,
        gpu_options: list[tuple[str, int]],
        avoid_saturated: bool,
        build: bool,
    ) -> tuple[Node, list[int]] | None:
        """Room for a container on some node. Starting one costs a CPU core for a few hundred
        ms: a node starts no more at once than it has cores, so a burst of inputs does not
        starve the running ones. Image build steps run on the control plane's own machine."""
        if build and self.scheduler.placement.builds is not None:
            node = self.scheduler.placement.builds
            devices = await node.reserve(task_id, memory_mib, gpu_options)
            return None if devices is None else (node, devices)
        return await self.scheduler.placement.reserve(
            task_id, memory_mib, gpu_options, self._starting(), MAX_STARTING, avoid_saturated
        )

    def resolve(self, function_id: str):  # type: ignore[no-untyped-def]
        """(function, its effective definition, its parameters, its app); raises if gone."""
        function = self.scheduler.apps.function(function_id)
        definition, params = catalog.effective_definition(self.scheduler.apps, function)
        return function, definition, params, self.scheduler.apps.get("", function.app_id)

    async def keep_warm(self) -> None:
        """min_containers stay up without traffic; while a function is busy, buffer_containers
        more wait idle for the next burst."""
        for function_id in self.scheduler.apps.warm_functions():
            if not self.scheduler.is_home(function_id):
                continue
            try:
                function, definition, params, app = self.resolve(function_id)
            except Exception as error:
                log.warning("cannot keep %s warm: %s", function_id, error)
                continue
            mine = [
                c
                for c in self.scheduler.containers.values()
                if c.function_id == function_id and not c.stop_reason
            ]
            missing = self._warm_target(definition, mine) - len(mine)
            missing = min(missing, self.scheduler.max_containers - len(self.scheduler.containers))
            for _ in range(max(missing, 0)):
                task_id = ids.new_id("task")
                placed = await self._reserve(
                    task_id, memory_request_mib(definition), self._gpu_options(function), False, False
                )
                if placed is None:
                    break  # no room: warm containers never take memory or a GPU from queued work
                node, gpu_indices = placed
                reason = "kept warm (min_containers/buffer_containers)"
                await self.scheduler.start(
                    function, definition, params, app, task_id, node, gpu_indices, reason
                )

    @staticmethod
    def _warm_target(definition: api_pb2.Function, mine: list[RunningContainer]) -> int:
        policy = autoscaling.autoscaling(definition, DEFAULT_IDLE_S)
        busy = sum(1 for c in mine if c.inputs)
        target = max(policy.min_containers, busy + policy.buffer_containers if busy else 0)
        return min(target, policy.max_containers) if policy.max_containers else target

    def may_scale_down(self, running: RunningContainer) -> bool:
        """An idle container may stop unless the function's min/buffer containers need it."""
        try:
            definition, _ = catalog.effective_definition(
                self.scheduler.apps, self.scheduler.apps.function(running.function_id)
            )
        except Exception:
            return True
        mine = [
            c
            for c in self.scheduler.containers.values()
            if c.function_id == running.function_id and not c.stop_reason
        ]
        return len(mine) - 1 >= self._warm_target(definition, mine)

    def _gpu_options(self, function) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
        """(model, count) choices in rank order; class instances inherit their class's unless
        `with_options(gpu=...)` names another."""
        if function.gpu_options or not function.parent_id:
            return function.gpu_options  # type: ignore[no-any-return]
        if function.options is not None and (chosen := catalog.gpu_request(function.options.resources)):
            return [chosen]
        return self.scheduler.apps.function(function.parent_id).gpu_options

    def _free_idle_gpus(self, function_id: str) -> None:
        """Ask one idle container of another function that holds a GPU to stop (its own
        function's containers will take the queued inputs themselves)."""
        holders = {task for node in self.scheduler.placement.all() for task in node.gpu_holders()}
        now = time.monotonic()
        for running in self.scheduler.containers.values():
            if (
                running.task_id in holders
                and running.function_id != function_id
                and not running.inputs
                and not running.stop_reason
                and now - running.last_active > GPU_IDLE_GRACE_S
            ):
                self.scheduler.request_stop(running, "its GPU is needed by queued inputs")
                return

    def prewarm(self, function_ids: list[str]) -> None:
        """Get zygotes ready on every node for these functions' images (an app was
        published): their first containers are then forked, not started afresh."""
        tasks = self.scheduler._tasks
        assert tasks is not None, "prewarm needs the running scheduler"
        for function_id in function_ids:
            try:
                _, definition, _, app = self.resolve(function_id)
                chain, config = self.scheduler.images.runtime_chain(definition.image_id)
            except Exception as error:  # not built yet, or gone: nothing to prewarm
                log.debug("no zygote for %s: %s", function_id, error)
                continue
            order = ZygoteOrder(
                workspace_id=app.workspace_id,
                layers=tuple(chain),
                started_environment=interpreter_environment(config, app.environment_name),
                python_version=config.python_version,
                control_address=self.scheduler.orders.control_address,
            )
            for node in self.scheduler.placement.all():
                tasks.create_task(self._prewarm(node, order))

    @staticmethod
    async def _prewarm(node: Node, order: ZygoteOrder) -> None:
        try:
            await node.prewarm(order)
        except Exception as error:
            log.warning("no zygote on %s: %r", node.node_id, error)

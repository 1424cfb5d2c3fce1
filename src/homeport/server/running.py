"""What the control plane knows of each container it runs: the inputs it holds, whether it
is ready, why it is stopping, which node runs it; with the small rules about
containers the scheduler applies (memory requests, fixed environment, secret redaction,
start-up back-off)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport.agent.node import ContainerExit
from homeport.server.services.logs import LogService
from homeport.server.services.usage import ContainerUsage


def redactor(secret_values) -> Callable[[str], str]:  # type: ignore[no-untyped-def]
    """Container output passes through this before it is stored: secret values (of a
    length that cannot be a coincidence) never reach the logs."""
    values = sorted({v for v in secret_values if len(v) >= 6}, key=len, reverse=True)
    if not values:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(v) for v in values))
    return lambda text: pattern.sub("***", text)


def container_log_writer(
    logs: LogService,
    app_id: str,
    task_id: str,
    function_id: str | None,
    limit_bytes: int,
) -> Callable[[int, str], None]:
    """Where a container's output goes (secrets already redacted, see `redactor`): its
    app's logs, up to `limit_bytes` (HOMEPORT_CONTAINER_LOG_BYTES; the rest is dropped,
    saying so)."""
    logged_bytes = 0

    def write(fd: int, text: str) -> None:
        nonlocal logged_bytes
        if logged_bytes >= limit_bytes:
            return
        logged_bytes += len(text)
        if logged_bytes >= limit_bytes:
            text += (
                f"\n[homeport: this container has written {limit_bytes} bytes of logs; "
                "the rest is not kept (HOMEPORT_CONTAINER_LOG_BYTES)]\n"
            )
        try:
            logs.append(app_id, task_id, function_id, fd, text)
        except sa.exc.OperationalError:
            pass  # the database is away for a moment: this piece of output is not kept

    return write


def stop_key(task_id: str) -> str:
    return f"stop:{task_id}"


class StartBackoff:
    """Containers of one function that keep ending before they are ready: each start after
    the second such failure in a row waits twice as long (up to a minute)."""

    MAX_DELAY_S = 60.0

    def __init__(self) -> None:
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}

    def failed(self, function_id: str) -> float:
        """Record a start that failed; returns how long the next one waits."""
        count = self._failures[function_id] = self._failures.get(function_id, 0) + 1
        delay = 0.0 if count < 2 else min(2.0 ** (count - 2), self.MAX_DELAY_S)
        self._not_before[function_id] = time.monotonic() + delay
        return delay

    def succeeded(self, function_id: str) -> None:
        self._failures.pop(function_id, None)
        self._not_before.pop(function_id, None)

    def failures(self, function_id: str) -> int:
        return self._failures.get(function_id, 0)

    def waiting(self, function_id: str) -> bool:
        return time.monotonic() < self._not_before.get(function_id, 0.0)


@dataclasses.dataclass
class RunningContainer:
    task_id: str
    function_id: str
    app_id: str
    workspace_id: str
    definition: api_pb2.Function
    started_at: float
    max_inputs: int  # inputs it runs at once
    idle_timeout_s: float
    inputs: dict[str, float] = dataclasses.field(default_factory=dict)  # input id -> claimed at
    hello: bool = False
    # It has asked for its first input: imports and @enter hooks are done. Its idle clock
    # starts then (client 1.6.4 sends ContainerHello before running them).
    ready: bool = False
    last_active: float = dataclasses.field(default_factory=time.monotonic)
    stop_reason: str | None = None  # set once we decided to stop it
    stop_requested_at: float | None = None
    init_failure: api_pb2.GenericResult | None = None
    stderr_tail: deque[str] = dataclasses.field(default_factory=lambda: deque(maxlen=64))
    node: Any = None  # the server/nodes.py Node it runs on
    volume_ids: set[str] = dataclasses.field(default_factory=set)  # writable volumes it mounts
    volume_locks: dict[str, asyncio.Lock] = dataclasses.field(default_factory=dict)
    started_wall: float = dataclasses.field(default_factory=time.time)
    gpu_devices: list[int] = dataclasses.field(default_factory=list)
    build_step: bool = False

    @property
    def free_slots(self) -> int:
        return 0 if self.stop_reason else max(self.max_inputs - len(self.inputs), 0)


# What a container without memory= reserves (Modal's default request).
DEFAULT_MEMORY_REQUEST_MIB = 128


def memory_request_mib(definition: api_pb2.Function) -> int:
    """What a container of this function reserves on its node: its memory request
    (`memory=N` or the first of `memory=(request, limit)`)."""
    return definition.resources.memory_mb or DEFAULT_MEMORY_REQUEST_MIB


# Set by the server in every container, over the image's and the secrets' values.
FIXED_ENVIRONMENT = ("HOME", "PYTHONUNBUFFERED", "PYTHONPATH", "MODAL_IS_REMOTE", "MODAL_SERVER_URL",
                     "MODAL_DISABLE_API_PROXY", "MODAL_ENVIRONMENT")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class BuildStep:
    """A container running an Image.run_function step: its writable layer is kept (it
    becomes the image layer) and its output goes to the build log too."""

    upper_dir: Path
    on_output: Callable[[str], None]


def usage_record(running: RunningContainer, ended: ContainerExit) -> ContainerUsage:
    """What a container that ended used and reserved (billing, usage pages)."""
    resources = running.definition.resources
    gpus = running.node.inventory().gpus
    devices = running.gpu_devices
    return ContainerUsage(
        task_id=running.task_id,
        workspace_id=running.workspace_id,
        app_id=running.app_id,
        function_id=running.function_id,
        kind="build" if running.build_step else "function",
        node_id=running.node.node_id,
        started_at=running.started_wall,
        stopped_at=time.time(),
        cpu_seconds=ended.cpu_seconds,
        cpu_reserved_cores=(resources.milli_cpu or 0) / 1000,
        memory_reserved_mib=memory_request_mib(running.definition),
        memory_peak_mib=ended.memory_peak_bytes / 2**20,
        gpu_type=gpus[devices[0]] if devices and devices[0] < len(gpus) else "",
        gpu_count=len(devices),
    )

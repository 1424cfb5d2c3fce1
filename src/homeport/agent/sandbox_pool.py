"""A node's sandboxes: their container spec, and some started before anyone asks.

Most of a sandbox's create is the node starting its container (overlay root, cgroup,
network namespace, bubblewrap) and the supervisor's interpreter (about 130 ms on a 2-core
machine). Two sandboxes of one image and size differ only in what the supervisor is told
when the entrypoint starts: the command, its environment (secrets, `env=`), its working
directory and terminal. So once a sandbox of some kind has started, the node keeps
`POOL_SIZE` more of that kind started, their supervisors waiting; a create of that kind
takes one (its entrypoint starts at once) and another is started behind it. A kind is
the image's layers, memory, CPU, disk and network on/off; a sandbox with something bound
or enforced for itself alone (volumes, GPUs, an outbound allow-list) always starts afresh.
A waiting sandbox nobody took for `POOL_IDLE_S` is stopped.

A taken sandbox keeps the id it was started under for its work directory, cgroup and
network namespace; the control plane knows it by the task id of the create, which is all a
user sees (every sandbox's hostname is the same, `sandbox`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from homeport.agent.host_python import SANDBOX_PYTHON_VARIABLE, SUPERVISOR, SUPERVISOR_SOCKET, host_python
from homeport.agent.order import ContainerOrder
from homeport.agent.runtime import BoundDirectory, Container, ContainerSpec
from homeport.agent.sandbox_processes import SandboxProcesses

log = logging.getLogger("homeport.sandbox")

POOL_SIZE = int(os.environ.get("HOMEPORT_SANDBOX_POOL", "2"))
POOL_IDLE_S = 300.0
SANDBOX_HOSTNAME = "sandbox"


def sandbox_spec(
    order: ContainerOrder,
    task_id: str,
    work_dir: Path,
    layers: list[Path],
    volumes: list[BoundDirectory],
    node_id: str,
) -> ContainerSpec:
    """A sandbox's container: the supervisor (the node's Python, see host_python.py),
    waiting to be told the entrypoint with its environment and working directory
    (`SandboxProcesses.start_entrypoint`), whether that is at once or once a create takes
    it; the run directory holds the supervisor's socket."""
    python = host_python()
    run_dir = work_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return ContainerSpec(
        task_id=task_id,
        app_id=order.app_id,
        function_id=order.function_id,
        container_arguments=b"",
        environment={"HOMEPORT_NODE_ID": node_id, SANDBOX_PYTHON_VARIABLE: json.dumps(python.interpreter())},
        files=[],
        client_package_dir=None,
        image_layers=layers,
        working_dir="/",
        directories=[*python.directories(run_dir), *volumes],
        network=order.network,
        egress_cidrs=order.egress_cidrs,
        memory_mib=order.memory_mib,
        cpu_cores=order.cpu_cores,
        disk_mib=order.disk_mib,
        work_dir=work_dir,
        gpu_devices=list(order.gpu_devices),
        command=tuple(python.command(SUPERVISOR, SUPERVISOR_SOCKET)),
        # Not its id: one started ahead is taken under another (see above), and the two
        # kinds must look alike.
        hostname=SANDBOX_HOSTNAME,
    )


@dataclasses.dataclass(frozen=True)
class PoolKind:
    layers: tuple[str, ...]
    memory_mib: int
    cpu_cores: float
    disk_mib: int
    network: bool


def pool_kind(order: ContainerOrder) -> PoolKind | None:
    """The kind of sandbox an order asks for, or None if it must start afresh."""
    if not order.sandbox_entrypoint or order.volumes or order.gpu_devices or order.egress_cidrs is not None:
        return None
    return PoolKind(order.layers, order.memory_mib, order.cpu_cores, order.disk_mib, order.network)


class OutputRelay:
    """The container's own output, to whoever took it (nobody yet: dropped)."""

    def __init__(self) -> None:
        self.target: Callable[[int, str], None] | None = None

    def __call__(self, fd: int, text: str) -> None:
        if self.target is not None:
            self.target(fd, text)


@dataclasses.dataclass
class Waiting:
    task_id: str  # the id it was started under
    container: Container
    processes: SandboxProcesses
    relay: OutputRelay
    since: float = dataclasses.field(default_factory=time.monotonic)


class SandboxPool:
    def __init__(self, launch: Callable[[ContainerOrder], Awaitable[Waiting]], size: int = POOL_SIZE) -> None:
        self._launch = launch  # starts one waiting sandbox of the order's kind
        self.size = size
        self._waiting: dict[PoolKind, list[Waiting]] = {}
        self._starting: dict[PoolKind, int] = {}
        self._launches: set[asyncio.Task[None]] = set()
        self._waits: set[asyncio.Task[None]] = set()  # of ones stopped: their release

    def take(self, order: ContainerOrder) -> Waiting | None:
        """A started sandbox of the order's kind, still alive, or None."""
        kind = pool_kind(order)
        waiting = self._waiting.get(kind, []) if kind is not None else []
        while waiting:
            found = waiting.pop(0)
            if not found.processes.gone.is_set():
                return found
            self.discard(found)  # its supervisor went away: of no use
        return None

    def discard(self, found: Waiting) -> None:
        """Stop one (dead, idle, or refused its entrypoint); its release happens on its wait."""
        found.container.kill()
        _keep(self._waits, asyncio.get_running_loop().create_task(self._wait(found)))

    @staticmethod
    async def _wait(found: Waiting) -> None:
        await found.container.wait()

    def refill(self, order: ContainerOrder) -> None:
        """Start more of the order's kind in the background, up to `size` waiting."""
        kind = pool_kind(order)
        if kind is None or self.size <= 0:
            return
        missing = self.size - len(self._waiting.get(kind, [])) - self._starting.get(kind, 0)
        for _ in range(max(missing, 0)):
            self._starting[kind] = self._starting.get(kind, 0) + 1
            _keep(self._launches, asyncio.get_running_loop().create_task(self._start_one(kind, order)))

    async def _start_one(self, kind: PoolKind, order: ContainerOrder) -> None:
        try:
            waiting = await self._launch(order)
        except Exception as error:  # the next create starts afresh, and asks again
            log.warning("could not start a sandbox ahead: %s", error)
            return
        finally:
            self._starting[kind] -= 1
        self._waiting.setdefault(kind, []).append(waiting)

    def sweep(self) -> None:
        """Stop the sandboxes nobody took for POOL_IDLE_S."""
        now = time.monotonic()
        for kind, waiting in list(self._waiting.items()):
            keep = []
            for found in waiting:
                if now - found.since > POOL_IDLE_S or found.processes.gone.is_set():
                    self.discard(found)
                else:
                    keep.append(found)
            self._waiting[kind] = keep

    async def shutdown(self) -> None:
        self.size = 0  # nothing more is started
        launches = list(self._launches)
        for task in launches:
            task.cancel()
        await asyncio.gather(*launches, return_exceptions=True)
        for waiting in self._waiting.values():
            for found in waiting:
                self.discard(found)
        self._waiting.clear()
        await asyncio.gather(*self._waits, return_exceptions=True)


def _keep(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    tasks.add(task)
    task.add_done_callback(tasks.discard)

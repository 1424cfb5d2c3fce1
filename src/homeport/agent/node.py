"""The node agent: owns one machine and the containers on it.

It holds the machine's runtime (bubblewrap, zygotes or gVisor), its GPUs, its memory
budget, its CPU load and the containers' work directories; it reserves room for a
container, starts and stops it, watches its disk, and reports how it ended. The control
plane (server/scheduler.py) decides which containers to run and what they run; it reaches
a machine only through the methods of this class, so that the same narrow interface can
be served in-process (one machine, the default) or by an agent on another machine.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from homeport import ids
from homeport.agent import cgroups, layer_copy, rootfs, volume_copy
from homeport.agent.assets import Assets
from homeport.agent.cpu import CpuMeter
from homeport.agent.gpus import GpuPool, GpuRequest
from homeport.agent.gpus import detect as detect_gpus
from homeport.agent.host_python import (
    SOCKET_NAME,
)
from homeport.agent.order import ContainerOrder
from homeport.agent.readiness import Readiness
from homeport.agent.runtime import (
    BoundDirectory,
    Container,
    ContainerSpec,
    ContainerStartError,
    MountedFile,
    OutputCallback,
    Runtime,
    shell_exit_code,
)
from homeport.agent.sandbox_io import SandboxActivity
from homeport.agent.sandbox_pool import OutputRelay, SandboxPool, Waiting, sandbox_spec
from homeport.agent.sandbox_processes import SandboxProcesses
from homeport.agent.trust import trust_binding
from homeport.agent.tunnels import OpenTunnels, Tunnel, TunnelGate
from homeport.agent.volume_copy import Entry, VolumeView
from homeport.agent.zygote_image import ZygoteImage

log = logging.getLogger("homeport.agent")

# Memory kept for the host itself, the server and page cache.
NODE_MEMORY_SHARE = 0.9
# After the interrupt at shutdown, how long containers get to run @exit and commit volumes.
SHUTDOWN_GRACE_S = 10.0
SHUTDOWN_WAIT_S = 10.0
DISK_CHECK_INTERVAL_S = 2.0
SWEEP_INTERVAL_S = 10.0
STALE_CGROUPS_INTERVAL_S = 60.0
REPORT_INTERVAL_S = 5.0
# Busier than this, the node takes no more containers for a function that has some already.
SATURATED_CPU = 0.85
# Ended sandboxes whose output and exit statuses stay readable (the newest this many).
ENDED_SANDBOXES_KEPT = 256


def node_memory_budget_mib() -> int:
    """Memory containers may reserve on this node: HOMEPORT_NODE_MEMORY_MIB, else 90% of RAM."""
    override = os.environ.get("HOMEPORT_NODE_MEMORY_MIB")
    if override:
        return int(override)
    with open("/proc/meminfo") as meminfo:
        total_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return int(total_kib / 1024 * NODE_MEMORY_SHARE)


@dataclasses.dataclass(frozen=True)
class ContainerExit:
    """How a container ended, as its node saw it."""

    code: int  # shell-style: 128 + N when killed by signal N
    reason: str | None  # the node's own account, when it knows better than the code (out of memory, disk)
    lost: bool  # the platform lost it (its zygote died): not the container's doing
    cpu_seconds: float = 0.0  # CPU time it used (cgroup accounting)
    memory_peak_bytes: int = 0
    # What it changed in its volumes, committed as it exited (ContainerOrder.commit_volumes_at_exit).
    volume_changes: tuple[tuple[str, tuple[Entry, ...], tuple[str, ...]], ...] = ()


@dataclasses.dataclass(frozen=True)
class NodeInventory:
    """What a node has and what of it is taken: what placement decides from."""

    node_id: str
    started_at: float
    cpu_count: int
    cpu_busy: float  # fraction of all cores, over the last half second
    memory_budget_mib: int
    memory_reserved_mib: int
    gpus: tuple[str, ...]  # models, by device index
    gpus_busy: int
    containers: int
    memory_snapshots: bool = False  # it can take and restore memory snapshots (agent/memory_snapshots.py)


def default_node_id() -> str:
    """HOMEPORT_NODE_ID, else the machine's host name."""
    return os.environ.get("HOMEPORT_NODE_ID") or socket.gethostname()


@dataclasses.dataclass(frozen=True)
class ZygoteOrder:
    """Get a zygote ready for containers of this workspace, image and start-up environment."""

    workspace_id: str
    layers: tuple[str, ...]
    started_environment: dict[str, str]
    python_version: str
    control_address: str = ""


@dataclasses.dataclass
class _Held:
    """What the node holds for one container: its reservation, and once started, the container."""

    memory_mib: int
    disk_limit_mib: int = 0  # watched on its writable layer; 0: bounded otherwise (ephemeral_disk=)
    container: Container | None = None
    fault: str | None = None  # why the node killed it for its own doing
    volumes: dict[str, VolumeView] = dataclasses.field(default_factory=dict)
    # (volume id, changed entries, removed paths) committed as it exited (commit_volumes_at_exit)
    final_commits: list[tuple[str, tuple[Entry, ...], tuple[str, ...]]] = dataclasses.field(
        default_factory=list
    )
    sandbox: SandboxProcesses | None = None  # a sandbox's processes, through its supervisor
    tunnels: OpenTunnels | None = None  # a sandbox's open ports


class NodeAgent:
    def __init__(
        self,
        runtime: Runtime,
        work_dirs: Callable[[str], Path],
        assets: Assets,
        node_id: str | None = None,
        report: Callable[[NodeInventory], None] | None = None,
        started: Callable[[str, float], None] | None = None,
        tunnel_gate: TunnelGate | None = None,
    ) -> None:
        """`report` receives the node's inventory every few seconds, `started` the kind and
        start-up time of each container (both: the control plane's, however it is reached);
        `tunnel_gate` publishes sandboxes' open ports (None: this node publishes none)."""
        self.node_id = node_id or default_node_id()
        self.started_at = time.time()
        self.runtime = runtime
        self.assets = assets
        self._report = report
        self._started = started
        self.tunnel_gate = tunnel_gate
        self._work_dirs = work_dirs
        self.gpus = GpuPool(detect_gpus())
        self.memory_budget_mib = node_memory_budget_mib()
        self._cpu = CpuMeter()
        self._held: dict[str, _Held] = {}
        self._ended_sandboxes: collections.OrderedDict[str, SandboxProcesses] = collections.OrderedDict()
        self._pool = SandboxPool(self._launch_waiting)
        self.sandbox_activity = SandboxActivity(self._held.__contains__)  # router calls, for idle_timeout
        self.trust_bundle: Path | None = None  # Homeport's CA for function containers (agent/trust.py)

    # --- room -----------------------------------------------------------------------------

    def refusal(self, memory_mib: int, gpu_options: list[tuple[str, int]]) -> str | None:
        """Why a container asking for this could never run here, or None."""
        if gpu_options and not any(self.gpus.can_ever_satisfy(GpuRequest(*option)) for option in gpu_options):
            asked = " or ".join(str(GpuRequest(*option)) for option in gpu_options)
            return f"gpu={asked!r} cannot be satisfied on this cluster, which has {self.gpus.describe()}"
        if memory_mib > self.memory_budget_mib:
            return (
                f"memory={memory_mib} MiB cannot be satisfied on this cluster, whose nodes have "
                f"{self.memory_budget_mib} MiB for containers; ask for less memory"
            )
        return None

    def reserve(self, task_id: str, memory_mib: int, gpu_options: list[tuple[str, int]]) -> list[int] | None:
        """Room for one container: the GPU devices it gets ([] without GPUs), or None while
        the memory or every matching GPU is taken (it never oversubscribes memory)."""
        reserved = sum(held.memory_mib for held in self._held.values())
        if reserved + memory_mib > self.memory_budget_mib:
            return None
        devices: list[int] | None = []
        if gpu_options:
            devices = next(
                (
                    got
                    for option in gpu_options
                    if (got := self.gpus.acquire(task_id, GpuRequest(*option))) is not None
                ),
                None,
            )
        if devices is None:
            return None
        self._held[task_id] = _Held(memory_mib)
        return devices

    def release(self, task_id: str) -> None:
        """Give back a reservation whose container never started (or has ended)."""
        held = self._held.pop(task_id, None)
        self.gpus.release(task_id)
        self.sandbox_activity.forget(task_id)
        if held is not None and held.sandbox is not None:
            # Its output stays readable after it ended (the client reads stderr after wait()).
            self._ended_sandboxes[task_id] = held.sandbox
            while len(self._ended_sandboxes) > ENDED_SANDBOXES_KEPT:
                self._ended_sandboxes.popitem(last=False)

    def gpu_model(self, devices: list[int]) -> str:
        """The model of these devices ("" for none)."""
        return self.gpus.models[devices[0]] if devices else ""

    def gpu_holders(self) -> set[str]:
        return set(self.gpus.holders.values())

    def saturated(self) -> bool:
        return self._cpu.sample() > SATURATED_CPU

    def work_dir(self, task_id: str) -> Path:
        return self._work_dirs(task_id)

    def inventory(self) -> NodeInventory:
        return NodeInventory(
            node_id=self.node_id,
            started_at=self.started_at,
            cpu_count=os.cpu_count() or 1,
            cpu_busy=round(self._cpu.sample(), 3),
            memory_budget_mib=self.memory_budget_mib,
            memory_reserved_mib=sum(held.memory_mib for held in self._held.values()),
            gpus=tuple(self.gpus.models),
            gpus_busy=len(self.gpus.holders),
            containers=self.running(),
            memory_snapshots=self.runtime.memory_snapshots,
        )

    # --- containers -----------------------------------------------------------------------

    async def start(self, order: ContainerOrder, on_output: OutputCallback) -> None:
        """Start a container in its reservation; raises (ContainerStartError and others) if it
        could not start, and the reservation is then released."""
        held = self._held.get(order.task_id)
        if held is None:
            raise RuntimeError(f"container {order.task_id} has no reservation on node {self.node_id}")
        began = time.monotonic()
        waiting = self._pool.take(order) if order.sandbox_entrypoint else None
        if waiting is not None:
            container = self._take_waiting(order, held, waiting, on_output)
            try:
                self._start_entrypoint(order, waiting.processes)
            except ConnectionError:  # its supervisor went away just now: start afresh
                self._pool.discard(waiting)
                held.container = held.sandbox = None
                waiting = None
        try:
            if waiting is None:
                spec = await self._resolve(order, held)
                container = held.container = await self.runtime.start(spec, on_output)
            if order.commit_volumes_at_exit and held.volumes:
                container_held = held
                container.holdings.on_exit.append(lambda: self._commit_volumes_at_exit(container_held))
            if order.sandbox_entrypoint:
                await self._sandbox_started(order, held, container, on_output)
        except BaseException:
            if held.tunnels is not None:
                await held.tunnels.close()
            if held.container is not None:
                held.container.kill()
                # Its wait releases what it holds (mounts, cgroup, work directory).
                asyncio.get_running_loop().create_task(held.container.wait())
            self.release(order.task_id)
            raise
        held.disk_limit_mib = order.disk_limit_mib
        if order.sandbox_entrypoint:
            self._pool.refill(order)
        if self._started is not None:
            kind = "pooled" if waiting is not None else getattr(held.container, "kind", "fresh")
            self._started(kind, time.monotonic() - began)

    async def _sandbox_started(
        self, order: ContainerOrder, held: _Held, container: Container, on_output: OutputCallback
    ) -> None:
        """A sandbox's container is up: its processes (a fresh one's supervisor is told the
        entrypoint now), readiness probe and tunnels."""
        if held.sandbox is None:
            held.sandbox = SandboxProcesses(container.holdings.work_dir / "run" / SOCKET_NAME, on_output)
            await held.sandbox.connect()
            self._start_entrypoint(order, held.sandbox)
        if order.readiness_probe is not None:
            held.sandbox.readiness = Readiness(order.readiness_probe, held.sandbox)
        if order.open_ports:
            held.tunnels = await self._open_tunnels(order, container)

    @staticmethod
    def _start_entrypoint(order: ContainerOrder, processes: SandboxProcesses) -> None:
        """The supervisor, fresh or started ahead, starts the entrypoint with the sandbox's
        own environment and working directory (raises ConnectionError if it is gone)."""
        processes.start_entrypoint(
            list(order.sandbox_entrypoint),
            {**order.started_environment, **order.environment},
            order.working_dir,
            order.sandbox_terminal,
        )

    def _take_waiting(
        self, order: ContainerOrder, held: _Held, waiting: Waiting, on_output: OutputCallback
    ) -> Container:
        """A sandbox started ahead (sandbox_pool.py) becomes this one: its output goes where
        this order's does."""
        held.container, held.sandbox = waiting.container, waiting.processes
        waiting.relay.target = on_output
        waiting.processes.on_entrypoint_output = on_output
        log.info("sandbox %s: started ahead as %s", order.task_id, waiting.task_id)
        return waiting.container

    async def _launch_waiting(self, order: ContainerOrder) -> Waiting:
        """One sandbox of the order's kind, started ahead, its supervisor waiting."""
        task_id = ids.new_sandbox_task_id()
        work_dir = self.work_dir(task_id)
        layers = await asyncio.to_thread(self.assets.layer_dirs, order.layers)
        spec = sandbox_spec(order, task_id, work_dir, layers, [], self.node_id)
        relay = OutputRelay()
        container = await self.runtime.start(spec, relay)
        processes = SandboxProcesses(work_dir / "run" / SOCKET_NAME)
        try:
            await processes.connect()
        except BaseException:
            container.kill()
            asyncio.get_running_loop().create_task(container.wait())
            raise
        return Waiting(task_id, container, processes, relay)

    async def _open_tunnels(self, order: ContainerOrder, container: Container) -> OpenTunnels:
        if self.tunnel_gate is None:
            raise ContainerStartError(
                f"node {self.node_id} does not publish sandbox ports; create the sandbox without "
                "encrypted_ports/unencrypted_ports"
            )
        address = container.holdings.address
        if address is None:
            if not order.network:  # block_network: nothing to reach (and never the host's loopback)
                raise ContainerStartError("a sandbox with block_network=True has no ports to open")
            address = "127.0.0.1"  # the node has no container network: it shares the host's
        return await self.tunnel_gate.open(address, order.open_ports, order.inbound_cidrs)

    def tunnels(self, task_id: str) -> list[Tunnel]:
        """A running sandbox's open ports, as published."""
        held = self._held.get(task_id)
        return list(held.tunnels.tunnels) if held is not None and held.tunnels is not None else []

    def sandbox(self, task_id: str) -> SandboxProcesses | None:
        """A running sandbox's processes (for the task command router beside it)."""
        held = self._held.get(task_id)
        return held.sandbox if held is not None else self._ended_sandboxes.get(task_id)

    async def _resolve(self, order: ContainerOrder, held: _Held) -> ContainerSpec:
        """The order on this node's disk: its layers, files, client package and volume copies."""
        if self.assets.at_hand(None if order.sandbox_entrypoint else order.python_version):
            # A trip to a thread costs a cold start 1-4 ms here (the loop is busy with the
            # caller meanwhile): not taken for a few paths and stats.
            layers, package, files = self._on_disk(order)
        else:
            layers, package, files = await asyncio.to_thread(self._on_disk, order)
        work_dir = self.work_dir(order.task_id)
        directories = await self._volume_copies(order, held, work_dir)
        if order.sandbox_entrypoint:
            return sandbox_spec(order, order.task_id, work_dir, layers, directories, self.node_id)
        assert package is not None
        control_socket = await self.assets.control_socket(order.control_address)
        environment = {**order.started_environment, **order.environment, "HOMEPORT_NODE_ID": self.node_id}
        trust, trusting = trust_binding(self.trust_bundle, work_dir, environment)
        return ContainerSpec(
            task_id=order.task_id,
            app_id=order.app_id,
            function_id=order.function_id,
            container_arguments=order.container_arguments,
            environment={**environment, **trusting},
            files=files,
            client_package_dir=package,
            image_layers=layers,
            working_dir=order.working_dir,
            directories=[*directories, *trust],
            control_socket=control_socket,
            network=order.network,
            memory_mib=order.memory_mib,
            cpu_cores=order.cpu_cores,
            disk_mib=order.disk_mib,
            gpu_devices=list(order.gpu_devices),
            upper_dir=order.upper_dir,
            work_dir=work_dir,
            memory_snapshot=order.memory_snapshot,
            zygote=ZygoteImage(
                domain=order.workspace_id,
                layers=tuple(layers),
                environment=tuple(sorted(order.started_environment.items())),
                client_package_dir=package,
                control_socket=control_socket,
            ),
        )

    def _on_disk(self, order: ContainerOrder) -> tuple[list[Path], Path | None, list[MountedFile]]:
        """(blocking: fetched and unpacked if need be) The order's image layers, and for a
        function its client package and mounted files. One trip off the event loop when
        something has to be fetched or made (Assets.at_hand)."""
        layers = self.assets.layer_dirs(order.layers)
        if order.sandbox_entrypoint:
            return layers, None, []
        package = self.assets.client_package(order.python_version)
        files = [MountedFile(f.container_path, self.assets.blob(f.blob_id), f.mode) for f in order.files]
        return layers, package, files

    async def _volume_copies(
        self, order: ContainerOrder, held: _Held, work_dir: Path
    ) -> list[BoundDirectory]:
        """The container's working copy of each volume it mounts, as committed now."""
        directories = []
        for volume in order.volumes:
            directory = work_dir / "volumes" / volume.volume_id
            base = await asyncio.to_thread(
                volume_copy.materialize, list(volume.entries), directory, self.assets.contents
            )
            held.volumes[volume.volume_id] = VolumeView(directory, volume.read_only, base)
            directories.append(BoundDirectory(directory, volume.mount_path, volume.read_only))
        return directories

    def _commit_volumes_at_exit(self, held: _Held) -> None:
        """Between the container's exit and the removal of its work directory: what it
        changed in its writable volume copies, contents stored (ContainerExit.volume_changes)."""
        for volume_id, view in held.volumes.items():
            if view.read_only:
                continue
            try:
                _, changed, removed = volume_copy.commit(view.directory, view.base, self.assets.contents)
            except Exception:  # the rest of the container's release must still happen
                log.exception("could not commit volume %s as its container exited", volume_id)
                continue
            held.final_commits.append((volume_id, tuple(changed), tuple(removed)))

    async def copy_writable_layer(self, task_id: str, destination: Path) -> None:
        """A running container's writable layer (what it changed in its image) copied into
        `destination` as it is now: owners, modes, xattrs (overlay's opaque directories)
        and device nodes (its whiteouts) included. For Sandbox.snapshot_filesystem."""
        held = self._held.get(task_id)
        upper = held.container.holdings.work_dir / "writable" / "fs" if held and held.container else None
        if upper is None or not upper.is_dir():
            raise LookupError(f"container {task_id} is not running on node {self.node_id}")
        try:  # never following a link the sandbox may swap in meanwhile (agent/layer_copy.py)
            await asyncio.to_thread(layer_copy.copy_tree, upper, destination)
        except OSError as error:
            raise RuntimeError(f"copying the writable layer of {task_id} failed: {error}") from None

    def checkpoint(self, task_id: str) -> None:
        """ContainerCheckpoint from one of its containers (enable_memory_snapshot=True): its
        memory snapshot is taken once the call is answered (agent/memory_snapshots.py)."""
        self.runtime.checkpoint(task_id)

    # --- volumes ------------------------------------------------------------------------------

    async def commit_volume(self, task_id: str, volume_id: str) -> tuple[list[Entry], list[str]] | None:
        """What changed in a container's copy of a volume, contents stored: (changed entries,
        removed paths) for the control plane to record; None if it has no writable copy."""
        held = self._held.get(task_id)
        view = held.volumes.get(volume_id) if held is not None else None
        if view is None or view.read_only:
            return None
        async with view.lock:
            view.base, changed, removed = await asyncio.to_thread(
                volume_copy.commit, view.directory, view.base, self.assets.contents
            )
        return changed, removed

    async def refresh_volume(self, task_id: str, volume_id: str, committed: list[Entry]) -> None:
        """Bring a container's copy up to the committed state (its own changes committed first)."""
        held = self._held.get(task_id)
        view = held.volumes.get(volume_id) if held is not None else None
        if view is None:
            return
        async with view.lock:
            mine = (
                view.base if not view.read_only else await asyncio.to_thread(volume_copy.scan, view.directory)
            )
            view.base = await asyncio.to_thread(
                volume_copy.refresh,
                view.directory,
                mine,
                {entry.path: entry for entry in committed},
                self.assets.contents,
            )

    async def wait(self, task_id: str) -> ContainerExit:
        """Wait until the container has exited; its reservation is released then."""
        held = self._held[task_id]
        assert held.container is not None
        try:
            code = shell_exit_code(await held.container.wait())
            if held.tunnels is not None:
                await held.tunnels.close()
            reason = held.fault or held.container.exit_reason()
            holdings = getattr(held.container, "holdings", None)
            cpu_seconds, peak = holdings.usage if holdings is not None else (0.0, 0)
            return ContainerExit(
                code,
                reason,
                bool(getattr(held.container, "lost", False)),
                cpu_seconds,
                peak,
                tuple(held.final_commits),
            )
        finally:
            self.release(task_id)

    def interrupt(self, task_id: str) -> None:
        """Ask a container to stop (SIGINT: the client runs @exit hooks)."""
        held = self._held.get(task_id)
        if held is not None and held.container is not None:
            held.container.interrupt()

    def kill(self, task_id: str) -> None:
        held = self._held.get(task_id)
        if held is not None and held.container is not None:
            held.container.kill()

    async def prewarm(self, order: ZygoteOrder) -> None:
        """Get a zygote ready (an app was published): the first containers are forked."""
        layers = await asyncio.to_thread(self.assets.layer_dirs, order.layers)
        package = await asyncio.to_thread(self.assets.client_package, order.python_version)
        self.runtime.prewarm(
            ZygoteImage(
                domain=order.workspace_id,
                layers=tuple(layers),
                environment=tuple(sorted(order.started_environment.items())),
                client_package_dir=package,
                control_socket=await self.assets.control_socket(order.control_address),
            )
        )

    def running(self) -> int:
        return sum(1 for held in self._held.values() if held.container is not None)

    # --- the node's own loops ---------------------------------------------------------------

    async def run(self) -> None:
        """The node's background work: disk limits, runtime housekeeping (idle zygotes)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._every(DISK_CHECK_INTERVAL_S, self._enforce_disk_limits))
            group.create_task(self._every(SWEEP_INTERVAL_S, self._sweep))
            if cgroups.available():
                group.create_task(self._every(STALE_CGROUPS_INTERVAL_S, self._sweep_stale_cgroups))
            if self._report is not None:
                group.create_task(self._every(REPORT_INTERVAL_S, self._report_inventory))

    async def _every(self, interval_s: float, step: Callable[[], object]) -> None:
        while True:
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("node %s: %s failed; continuing", self.node_id, getattr(step, "__name__", step))
            await asyncio.sleep(interval_s)

    def _report_inventory(self) -> None:
        # The in-process control plane's callback, called on its loop: it writes to the
        # database, which a PostgreSQL server engine only allows there (store/hosting.py).
        assert self._report is not None
        self._report(self.inventory())

    async def _sweep(self) -> None:
        self.runtime.sweep()
        self._pool.sweep()

    async def _sweep_stale_cgroups(self) -> None:
        removed = await asyncio.to_thread(cgroups.sweep_stale, set(self._held))
        if removed:
            log.info(
                "node %s: removed %d empty cgroup(s) left by servers that stopped uncleanly",
                self.node_id,
                removed,
            )

    async def _enforce_disk_limits(self) -> None:
        """A container's writable layer lives on the host's disk; one that outgrows its limit
        is killed, and its exit says why (as kubelet does for ephemeral storage)."""
        for task_id, held in list(self._held.items()):
            if not held.disk_limit_mib or held.fault is not None or held.container is None:
                continue
            used = await asyncio.to_thread(rootfs.used_bytes, held.container.holdings.work_dir / "writable")
            if used > held.disk_limit_mib * 2**20 and self._held.get(task_id) is held:
                held.fault = (
                    f"the container wrote more than its disk limit of {held.disk_limit_mib} MiB "
                    "(ask for more with ephemeral_disk=, in MiB)"
                )
                log.warning("container %s: %s", task_id, held.fault)
                held.container.kill()

    async def shutdown(self) -> None:
        """Stop every container and wait (briefly) until each has exited and released what it
        held (work dir, cgroup, network namespace); then the runtime's own processes."""
        await self._pool.shutdown()
        containers = [held.container for held in self._held.values() if held.container is not None]
        if containers:
            # SIGINT first: @exit handlers run and volumes commit; then whatever is left is killed.
            for container in containers:
                container.interrupt()
            waits = [asyncio.create_task(container.wait()) for container in containers]
            _, pending = await asyncio.wait(waits, timeout=SHUTDOWN_GRACE_S)
            for container in containers:
                container.kill()
            if pending:
                await asyncio.wait(pending, timeout=SHUTDOWN_WAIT_S)
        await self.runtime.shutdown()
        await self.assets.close()

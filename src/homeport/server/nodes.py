"""The control plane's view of the machines that run containers, and placement.

A `Node` is the one narrow interface between the control plane and a machine: reserve
room, start an order, wait for its end, stop it, sync its volume copies. `LocalNode` is
this process's own agent (the embedded single-machine default); in a cluster,
server/cluster.py gives one `Node` per Ray node, talking to the agent actor there.
`Placement` chooses the node for each new container from the nodes' inventories.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from homeport.agent.gpus import GpuRequest
from homeport.agent.node import SATURATED_CPU, ContainerExit, NodeAgent, NodeInventory, ZygoteOrder
from homeport.agent.order import ContainerOrder
from homeport.agent.runtime import OutputCallback
from homeport.agent.sandbox_io import OutputChunks, read_output, write_v1_stdin
from homeport.agent.tunnels import Tunnel
from homeport.agent.volume_copy import Entry

log = logging.getLogger("homeport.placement")


class NodeLost(Exception):
    """The node went away while asked to do something: not the container's fault."""


class Node(Protocol):
    node_id: str
    router_url: str  # where clients reach this node's task command router ("" before it listens)
    container_router_url: str  # the same router, for the client inside this node's containers

    def inventory(self) -> NodeInventory: ...

    def refusal(self, memory_mib: int, gpu_options: list[tuple[str, int]]) -> str | None: ...

    async def reserve(
        self, task_id: str, memory_mib: int, gpu_options: list[tuple[str, int]]
    ) -> list[int] | None: ...

    def release(self, task_id: str) -> None: ...

    def gpu_holders(self) -> set[str]: ...

    async def start(self, order: ContainerOrder, on_output: OutputCallback) -> None: ...

    async def wait(self, task_id: str) -> ContainerExit: ...

    def interrupt(self, task_id: str) -> None: ...

    def checkpoint(self, task_id: str) -> None:
        """ContainerCheckpoint from a container of this node (agent/memory_snapshots.py)."""

    def kill(self, task_id: str) -> None: ...

    async def prewarm(self, order: ZygoteOrder) -> None: ...

    async def commit_volume(self, task_id: str, volume_id: str) -> tuple[list[Entry], list[str]] | None: ...

    async def refresh_volume(self, task_id: str, volume_id: str, committed: list[Entry]) -> None: ...

    async def tunnels(self, task_id: str) -> list[Tunnel]:
        """A running sandbox's open ports, as published."""
        ...

    async def copy_writable_layer(self, task_id: str, destination: Path) -> None:
        """A running container's writable layer, copied into `destination` (a directory
        on this machine): Sandbox.snapshot_filesystem."""
        ...

    async def sandbox_idle_s(self, task_id: str) -> float | None:
        """Seconds since the last router call on a sandbox ended (0 while one is open;
        None: it has had none)."""
        ...

    async def sandbox_output(self, task_id: str, fd: int, offset: int, wait_s: float) -> OutputChunks | None:
        """A sandbox entrypoint's output from `offset` (agent/sandbox_io.py); None once the
        node no longer knows the sandbox."""
        ...

    async def sandbox_stdin(self, task_id: str, index: int, data: bytes, eof: bool) -> str | None:
        """The V1 SandboxStdinWrite numbered `index`: None once delivered, else why not."""
        ...

    def container_blob_base(self) -> str | None:
        """Where this node's containers reach blob URLs (None: the server's own address)."""
        ...

    async def shutdown(self) -> None: ...


class LocalNode:
    """This process's own node agent, called directly."""

    def __init__(self, agent: NodeAgent, blob_base: Callable[[], str | None]) -> None:
        self.agent = agent
        self.node_id = agent.node_id
        self.router_url = ""  # set once the server's router listens (main.py)
        self.container_router_url = ""
        self._blob_base = blob_base

    def inventory(self) -> NodeInventory:
        return self.agent.inventory()

    def refusal(self, memory_mib: int, gpu_options: list[tuple[str, int]]) -> str | None:
        return self.agent.refusal(memory_mib, gpu_options)

    async def reserve(
        self, task_id: str, memory_mib: int, gpu_options: list[tuple[str, int]]
    ) -> list[int] | None:
        return self.agent.reserve(task_id, memory_mib, gpu_options)

    def release(self, task_id: str) -> None:
        self.agent.release(task_id)

    def gpu_holders(self) -> set[str]:
        return self.agent.gpu_holders()

    async def start(self, order: ContainerOrder, on_output: OutputCallback) -> None:
        await self.agent.start(order, on_output)

    async def wait(self, task_id: str) -> ContainerExit:
        return await self.agent.wait(task_id)

    def interrupt(self, task_id: str) -> None:
        self.agent.interrupt(task_id)

    def checkpoint(self, task_id: str) -> None:
        self.agent.checkpoint(task_id)

    def kill(self, task_id: str) -> None:
        self.agent.kill(task_id)

    async def prewarm(self, order: ZygoteOrder) -> None:
        await self.agent.prewarm(order)

    async def commit_volume(self, task_id: str, volume_id: str) -> tuple[list[Entry], list[str]] | None:
        return await self.agent.commit_volume(task_id, volume_id)

    async def refresh_volume(self, task_id: str, volume_id: str, committed: list[Entry]) -> None:
        await self.agent.refresh_volume(task_id, volume_id, committed)

    async def copy_writable_layer(self, task_id: str, destination: Path) -> None:
        await self.agent.copy_writable_layer(task_id, destination)

    async def tunnels(self, task_id: str) -> list[Tunnel]:
        return self.agent.tunnels(task_id)

    async def sandbox_idle_s(self, task_id: str) -> float | None:
        return self.agent.sandbox_activity.idle_s(task_id)

    async def sandbox_output(self, task_id: str, fd: int, offset: int, wait_s: float) -> OutputChunks | None:
        return await read_output(self.agent.sandbox(task_id), fd, offset, wait_s)

    async def sandbox_stdin(self, task_id: str, index: int, data: bytes, eof: bool) -> str | None:
        return write_v1_stdin(self.agent.sandbox(task_id), index, data, eof)

    def container_blob_base(self) -> str | None:
        return self._blob_base()

    async def shutdown(self) -> None:
        await self.agent.shutdown()


def describe_capacity(nodes: list[Node]) -> str:
    """What the cluster has, node by node: for messages about requests nobody can hold."""
    parts = []
    for node in nodes:
        inventory = node.inventory()
        gpus = ", ".join(f"{inventory.gpus.count(m)}x {m}" for m in sorted(set(inventory.gpus))) or "no GPUs"
        parts.append(f"{node.node_id}: {inventory.memory_budget_mib} MiB, {gpus}")
    return "; ".join(parts)


class Placement:
    """Which node runs each new container: among those that could ever hold it, the least
    loaded (reserved memory against budget, then containers), skipping nodes busy starting
    as many containers as they have cores."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.builds: Node | None = None  # where image build steps run (the control plane's machine)

    def add(self, node: Node) -> None:
        self.nodes[node.node_id] = node

    def remove(self, node_id: str) -> Node | None:
        return self.nodes.pop(node_id, None)

    def all(self) -> list[Node]:
        return list(self.nodes.values())

    def refusal(self, memory_mib: int, gpu_options: list[tuple[str, int]]) -> str | None:
        """Why no node of the cluster could ever hold this container, or None. With no node
        at all (a cluster still coming up), work waits rather than fails."""
        nodes = self.all()
        if not nodes:
            return None
        refusals = [node.refusal(memory_mib, gpu_options) for node in nodes]
        if any(refusal is None for refusal in refusals):
            return None
        if len(nodes) == 1:
            return refusals[0]
        asked = " or ".join(str(GpuRequest(*option)) for option in gpu_options) if gpu_options else None
        wanted = f"gpu={asked!r} with memory={memory_mib} MiB" if asked else f"memory={memory_mib} MiB"
        return (
            f"{wanted} cannot be satisfied by any node of this cluster, which has: {describe_capacity(nodes)}"
        )

    async def reserve(
        self,
        task_id: str,
        memory_mib: int,
        gpu_options: list[tuple[str, int]],
        starting: dict[str, int],
        max_starting: int,
        avoid_saturated: bool,
        prefer: str | None = None,
    ) -> tuple[Node, list[int]] | None:
        """Room on some node: (the node, its GPU devices), or None while no node has room;
        the node `prefer` names first when it can hold it."""

        def load(node: Node) -> tuple[float, int]:
            inventory = node.inventory()
            return (
                inventory.memory_reserved_mib / max(inventory.memory_budget_mib, 1),
                inventory.containers + starting.get(node.node_id, 0),
            )

        candidates = [
            node
            for node in self.all()
            if starting.get(node.node_id, 0) < max_starting
            and node.refusal(memory_mib, gpu_options) is None
            and not (avoid_saturated and node.inventory().cpu_busy > SATURATED_CPU)
        ]
        for node in sorted(candidates, key=lambda node: (node.node_id != prefer, load(node))):
            try:
                devices = await node.reserve(task_id, memory_mib, gpu_options)
            except Exception as error:  # a node going away: another may have room
                log.debug("no reservation on %s: %r", node.node_id, error)
                continue
            if devices is not None:
                return node, devices
        return None

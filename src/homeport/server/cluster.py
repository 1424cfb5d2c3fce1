"""Cluster mode: the nodes of a Ray cluster, each with its node agent actor.

`RayCluster` watches Ray's membership every second: a node that joins gets an agent
(agent/ray_agent.py, pinned to it) and becomes a `RayNode` placement can choose; a node
Ray marks dead is forgotten, and its containers end as lost (their inputs run again
elsewhere without using the function's retries). Ray's own health checks decide death;
scripts/cluster-local tunes them to about 3 s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from homeport.agent.assets import layer_key, pack, unpack
from homeport.agent.gpus import GpuPool, GpuRequest
from homeport.agent.node import REPORT_INTERVAL_S, SATURATED_CPU, ContainerExit, NodeInventory, ZygoteOrder
from homeport.agent.order import ContainerOrder
from homeport.agent.runtime import ContainerStartError, OutputCallback
from homeport.agent.sandbox_io import OutputChunks
from homeport.agent.tunnels import Tunnel
from homeport.agent.volume_copy import Entry
from homeport.server.nodes import NodeLost, Placement

log = logging.getLogger("homeport.cluster")

NAMESPACE = "homeport"
MEMBERSHIP_INTERVAL_S = 1.0
EVENTS_WAIT_S = 1.0
CALL_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0


class LayerPublisher:
    """Image layers go to the object store before a node is asked to run them (each once;
    a layer another replica published is found there)."""

    def __init__(self, layers, store) -> None:  # type: ignore[no-untyped-def]
        self.layers = layers  # images.layers.LayerStore
        self.store = store  # objectstore.ObjectStore
        self._published: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, chain: tuple[str, ...]) -> None:
        for ref in chain:
            if ref in self._published:
                continue
            async with self._locks.setdefault(ref, asyncio.Lock()):
                if ref not in self._published:
                    await asyncio.to_thread(self._publish, ref)
                    self._published.add(ref)

    def _publish(self, ref: str) -> None:
        key = layer_key(ref)
        if self.store.exists(key):
            return
        began = time.monotonic()
        archive = self.layers.root / f".publish-{ref.replace(':', '_')}-{time.monotonic_ns()}.tar"
        try:
            pack(self.layers.path(ref), archive)
            self.store.upload(key, archive)
            log.info(
                "published layer %s to the object store (%.0f MiB, %.1f s)",
                ref,
                archive.stat().st_size / 2**20,
                time.monotonic() - began,
            )
        finally:
            archive.unlink(missing_ok=True)


class RayNode:
    """One Ray node's agent, as the control plane sees it (the `Node` interface)."""

    def __init__(
        self,
        actor: Any,
        ray_node_id: str,
        node_id: str,
        inventory: NodeInventory,
        owner: str,
        publisher: LayerPublisher,
    ) -> None:
        self.actor = actor
        self.publisher = publisher
        self.ray_node_id = ray_node_id
        self.node_id = node_id
        self.owner = owner
        self.blob_base: str | None = None
        # The node's own task command router (agent/node_router.py), as clients and as
        # the node's own containers reach it.
        self.router_url = ""
        self.container_router_url = ""
        self._inventory = inventory
        self._gpu_holders: set[str] = set()
        self._outputs: dict[str, OutputCallback] = {}
        self._exits: dict[str, asyncio.Future[ContainerExit]] = {}
        self._pump: asyncio.Task[None] | None = None
        self._gone: str | None = None

    # --- what placement reads -------------------------------------------------------------

    def inventory(self) -> NodeInventory:
        return self._inventory

    def refusal(self, memory_mib: int, gpu_options: list[tuple[str, int]]) -> str | None:
        if self._gone is not None:
            return self._gone
        inventory = self._inventory
        pool = GpuPool(list(inventory.gpus))
        if gpu_options and not any(pool.can_ever_satisfy(GpuRequest(*option)) for option in gpu_options):
            return f"node {self.node_id} has {pool.describe()}"
        if memory_mib > inventory.memory_budget_mib:
            return f"node {self.node_id} has {inventory.memory_budget_mib} MiB for containers"
        return None

    def saturated(self) -> bool:
        return self._inventory.cpu_busy > SATURATED_CPU

    def gpu_holders(self) -> set[str]:
        return self._gpu_holders

    def container_blob_base(self) -> str | None:
        return self.blob_base

    # --- calls ------------------------------------------------------------------------------

    async def _call(self, method: str, *args: Any) -> Any:
        return await asyncio.wait_for(getattr(self.actor, method).remote(*args), CALL_TIMEOUT_S)

    async def reserve(
        self, task_id: str, memory_mib: int, gpu_options: list[tuple[str, int]]
    ) -> list[int] | None:
        if self._gone is not None:
            return None
        devices = await self._call("reserve", task_id, memory_mib, gpu_options)
        if devices is not None:
            # Until the next report, placement sees this reservation too.
            self._inventory = _with(self._inventory, memory_mib, 1)
        return devices  # type: ignore[no-any-return]

    def release(self, task_id: str) -> None:
        if self._gone is None:
            self.actor.release.remote(task_id)

    async def start(self, order: ContainerOrder, on_output: OutputCallback) -> None:
        await self.publisher.ensure(order.layers)
        self._outputs[order.task_id] = on_output
        self._exits[order.task_id] = asyncio.get_running_loop().create_future()
        try:
            refusal = await asyncio.wait_for(self.actor.start.remote(order, self.owner), 600)
        except asyncio.CancelledError:
            self._forget(order.task_id)
            raise
        except Exception as error:
            self._forget(order.task_id)
            raise NodeLost(f"node {self.node_id} did not start the container: {error}") from None
        if refusal is not None:
            self._forget(order.task_id)
            raise ContainerStartError(refusal)

    def _forget(self, task_id: str) -> None:
        self._outputs.pop(task_id, None)
        self._exits.pop(task_id, None)

    async def wait(self, task_id: str) -> ContainerExit:
        try:
            return await self._exits[task_id]
        finally:
            self._forget(task_id)

    def interrupt(self, task_id: str) -> None:
        if self._gone is None:
            self.actor.interrupt.remote(task_id)

    def checkpoint(self, task_id: str) -> None:
        if self._gone is None:
            self.actor.checkpoint.remote(task_id)

    def kill(self, task_id: str) -> None:
        if self._gone is None:
            self.actor.kill.remote(task_id)

    async def prewarm(self, order: ZygoteOrder) -> None:
        await self.publisher.ensure(order.layers)
        # The node may fetch the image's layers first: minutes for a large image.
        await asyncio.wait_for(self.actor.prewarm.remote(order), 600)

    async def commit_volume(self, task_id: str, volume_id: str) -> tuple[list[Entry], list[str]] | None:
        return await self._call("commit_volume", task_id, volume_id)  # type: ignore[no-any-return]

    async def tunnels(self, task_id: str) -> list[Tunnel]:
        return await self._call("tunnels", task_id)  # type: ignore[no-any-return]

    async def copy_writable_layer(self, task_id: str, destination: Path) -> None:
        """The node packs the layer into the object store; it is unpacked here."""
        key = f"sandbox-snapshots/{task_id}-{uuid.uuid4().hex}.tar"
        refusal = await asyncio.wait_for(self.actor.upload_writable_layer.remote(task_id, key), 600)
        if refusal is not None:
            raise RuntimeError(refusal)
        store = self.publisher.store
        archive = destination.parent / f"{destination.name}.tar"
        try:
            if not await asyncio.to_thread(store.download, key, archive):
                raise RuntimeError(f"the snapshot of {task_id} did not reach the object store")
            await asyncio.to_thread(unpack, archive, destination)
        finally:
            archive.unlink(missing_ok=True)
            await asyncio.to_thread(store.delete, key)

    async def sandbox_idle_s(self, task_id: str) -> float | None:
        return await self._call("sandbox_idle_s", task_id)  # type: ignore[no-any-return]

    async def sandbox_output(self, task_id: str, fd: int, offset: int, wait_s: float) -> OutputChunks | None:
        return await asyncio.wait_for(  # type: ignore[no-any-return]
            self.actor.sandbox_output.remote(task_id, fd, offset, wait_s), wait_s + CALL_TIMEOUT_S
        )

    async def sandbox_stdin(self, task_id: str, index: int, data: bytes, eof: bool) -> str | None:
        return await self._call("sandbox_stdin", task_id, index, data, eof)  # type: ignore[no-any-return]

    async def refresh_volume(self, task_id: str, volume_id: str, committed: list[Entry]) -> None:
        await self._call("refresh_volume", task_id, volume_id, committed)

    async def shutdown(self) -> None:
        """This replica stops: its containers on the node stop (others' keep running)."""
        if self._gone is None:
            try:
                await asyncio.wait_for(
                    self.actor.stop_owned.remote(self.owner, STOP_GRACE_S), STOP_GRACE_S + 5
                )
            except Exception as error:
                log.warning("could not stop containers on %s: %s", self.node_id, error)
        if self._pump is not None:
            self._pump.cancel()

    # --- events -------------------------------------------------------------------------------

    def run_pump(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._pump_events())

    async def _pump_events(self) -> None:
        """Output and exits of this replica's containers, as the node reports them."""
        while self._gone is None:
            try:
                events, inventory, holders = await asyncio.wait_for(
                    self.actor.events.remote(self.owner, EVENTS_WAIT_S), EVENTS_WAIT_S + CALL_TIMEOUT_S
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("events from %s: %s", self.node_id, error)
                await asyncio.sleep(0.5)  # membership decides whether the node is gone
                continue
            self._inventory = inventory
            self._gpu_holders = set(holders)
            for event in events:
                if event[0] == "out":
                    callback = self._outputs.get(event[1])
                    if callback is not None:
                        try:
                            callback(event[2], event[3])
                        except Exception:
                            log.exception("output of container %s was not stored", event[1])
                elif event[0] == "exit":
                    future = self._exits.get(event[1])
                    if future is not None and not future.done():
                        future.set_result(event[2])

    def lost(self, reason: str) -> None:
        """The node died: every container on it ended, lost by the platform."""
        self._gone = reason
        if self._pump is not None:
            self._pump.cancel()
        for future in self._exits.values():
            if not future.done():
                future.set_result(ContainerExit(137, reason, lost=True))


def _with(inventory: NodeInventory, memory_mib: int, containers: int) -> NodeInventory:
    return dataclasses.replace(
        inventory,
        memory_reserved_mib=inventory.memory_reserved_mib + memory_mib,
        containers=inventory.containers + containers,
    )


class RayCluster:
    def __init__(
        self,
        address: str,
        placement: Placement,
        blob_url: str,
        publisher: LayerPublisher,
        owner: str,
        blob_port: int,
        blob_target: str,
        object_store_environment: dict[str, str],
        report,  # type: ignore[no-untyped-def]
        router_setup,  # type: ignore[no-untyped-def]
    ) -> None:
        self.address = address
        self.placement = placement
        self.blob_url = blob_url
        self.publisher = publisher
        self.owner = owner
        self.blob_port = blob_port
        self.blob_target = blob_target
        self.environment = object_store_environment
        self.report = report  # NodeRegistry.report: `homeport nodes` reads it
        self.router_setup = router_setup  # node addresses -> ray_agent.RouterSetup, for its sandboxes
        self.nodes: dict[str, RayNode] = {}  # by Ray node id
        self._joining: set[str] = set()
        self._reported_at = 0.0

    def connect(self) -> None:
        """Join the Ray cluster as a driver (blocking; before serving)."""
        import ray

        ray.init(
            address=self.address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
        log.info("joined the Ray cluster at %s", self.address)

    async def run(self) -> None:
        while True:
            try:
                await self._membership()
            except sa.exc.OperationalError as error:
                log.warning(
                    "cluster membership check: the database is unreachable (%s); continuing", error.orig
                )
            except Exception:
                log.exception("cluster membership check failed; continuing")
            await asyncio.sleep(MEMBERSHIP_INTERVAL_S)

    async def _membership(self) -> None:
        import ray

        seen = await asyncio.to_thread(ray.nodes)
        alive = {node["NodeID"] for node in seen if node.get("Alive")}
        for ray_node_id, node in list(self.nodes.items()):
            if ray_node_id not in alive:
                reason = f"its node {node.node_id} was lost (Ray marked it dead)"
                log.warning("node %s left the cluster; its containers are lost", node.node_id)
                node.lost(reason)
                del self.nodes[ray_node_id]
                self.placement.remove(node.node_id)
        for ray_node_id in alive - set(self.nodes) - self._joining:
            self._joining.add(ray_node_id)
            asyncio.get_running_loop().create_task(self._join(ray_node_id))
        if time.monotonic() - self._reported_at >= REPORT_INTERVAL_S:
            self._reported_at = time.monotonic()
            for node in list(self.nodes.values()):
                self.report(node.inventory())

    async def _join(self, ray_node_id: str) -> None:
        """Start (or find) the agent on a node that joined, and add it to placement."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from homeport.agent.ray_agent import actor_class

        began = time.monotonic()
        try:
            actor = (
                actor_class()
                .options(
                    name=f"homeport-agent-{ray_node_id}",
                    lifetime="detached",
                    get_if_exists=True,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(ray_node_id, soft=False),
                )
                .remote(self.blob_url, self.environment, ray_node_id)
            )
            info = await asyncio.wait_for(actor.hello.remote(self.blob_port, self.blob_target), 120)
            router_urls = await self._serve_sandboxes(actor, info)
            _, inventory, _ = await asyncio.wait_for(actor.events.remote(self.owner, 0.0), CALL_TIMEOUT_S)
        except Exception as error:
            log.warning("no agent on Ray node %s yet: %s", ray_node_id[:12], error)
            self._joining.discard(ray_node_id)
            return
        node = RayNode(actor, ray_node_id, info.node_id, inventory, self.owner, self.publisher)
        node.router_url, node.container_router_url = router_urls
        if info.bridge_gateway is not None:
            node.blob_base = f"http://{info.bridge_gateway}:{self.blob_port}"
        node.run_pump()
        self.nodes[ray_node_id] = node
        self.placement.add(node)
        self._joining.discard(ray_node_id)
        log.info(
            "node %s joined (%d CPUs, %d MiB, GPUs: %s) in %.1f s",
            node.node_id,
            inventory.cpu_count,
            inventory.memory_budget_mib,
            ", ".join(inventory.gpus) or "none",
            time.monotonic() - began,
        )

    async def _serve_sandboxes(self, actor: Any, info: Any) -> tuple[str, str]:
        """The node's sandbox router (its URLs); a node whose router fails still runs
        functions, and says why it holds no sandboxes."""
        try:
            # The database (a shared CA): on the loop.
            setup = self.router_setup([info.host, *([info.bridge_gateway] if info.bridge_gateway else [])])
            return await asyncio.wait_for(actor.serve_sandboxes.remote(setup), CALL_TIMEOUT_S)  # type: ignore[no-any-return]
        except Exception as error:
            log.warning("node %s serves no sandboxes: its router did not start: %s", info.node_id, error)
            return "", ""

    async def stop_everywhere(self, owner: str) -> None:
        """Stop the containers a replica that is gone left on every node."""
        await asyncio.gather(
            *(
                asyncio.wait_for(node.actor.stop_owned.remote(owner, 0.0), CALL_TIMEOUT_S)
                for node in self.nodes.values()
            ),
            return_exceptions=True,
        )

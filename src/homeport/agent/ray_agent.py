"""The node agent on a Ray node: one actor pinned to each node of the cluster.

The control plane (server/cluster.py) creates it on every Ray node it sees, by name
(`homeport-agent-<ray node id>`, detached: it outlives any one control-plane replica, and
every replica finds the same agent). Ray carries the calls and tells who is alive; the
containers themselves are never Ray tasks: they are started by the `NodeAgent` inside
this actor exactly as on one machine (bubblewrap, zygotes, cgroups, the node's bridge),
and Ray's resource numbers are bookkeeping only.

The node is configured by the environment `ray start` ran with (its workers inherit it):
HOMEPORT_NODE_ID (default: host name and Ray node id), HOMEPORT_NODE_DIR (its data,
default /var/lib/homeport-node), HOMEPORT_BRIDGE and HOMEPORT_CONTAINER_SUBNET (its
container network), HOMEPORT_GPUS and HOMEPORT_NODE_MEMORY_MIB (as for `homeport serve`).

Each replica pulls its own containers' events (output, exits) with `events`, a long poll.
The node also serves its sandboxes' command router (agent/node_router.py) on
HOMEPORT_NODE_HOST (default: Ray's address for the node), port HOMEPORT_ROUTER_PORT
(default: any free one); that router is the one part that calls a control plane, over
HTTP, for exec secrets and filesystem snapshots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from homeport.agent.assets import ClusterAssets, pack
from homeport.agent.forward import PortForwarder
from homeport.agent.node import ContainerExit, NodeAgent, NodeInventory, ZygoteOrder
from homeport.agent.node_router import NodeRouter, tls_context
from homeport.agent.order import ContainerOrder
from homeport.agent.router import RouterCredentials
from homeport.agent.runtime import ContainerStartError
from homeport.agent.sandbox_io import OutputChunks, read_output, write_v1_stdin
from homeport.agent.trust import write_bundle
from homeport.agent.tunnels import Tunnel, TunnelGate
from homeport.agent.volume_copy import Entry

log = logging.getLogger("homeport.agent")

DEFAULT_NODE_DIR = "/var/lib/homeport-node"
MAX_BUFFERED_EVENTS = 20000  # per replica: output beyond this (a replica gone quiet) is dropped


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    node_id: str
    bridge_gateway: str | None  # where containers reach this node's forwarded ports
    host: str  # where clients reach this node: its sandboxes' router and tunnels


@dataclasses.dataclass(frozen=True)
class RouterSetup:
    """What a replica tells a node so it can serve sandboxes (serve_sandboxes)."""

    owner: str  # the replica
    callback_url: str  # its HTTP base, for what the router asks of the control plane
    signing_key: bytes  # router credentials (the same for every replica)
    certificate: tuple[bytes, bytes]  # PEM certificate and key for the node's addresses, from Homeport's CA
    ca: bytes  # Homeport's CA certificate (PEM), which the node's containers trust
    router_tls: bool  # False: the router speaks plain HTTP/2 (the control plane is on localhost)


@dataclasses.dataclass
class _Mailbox:
    events: list[tuple] = dataclasses.field(default_factory=list)  # type: ignore[type-arg]
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def put(self, event: tuple) -> None:  # type: ignore[type-arg]
        if len(self.events) >= MAX_BUFFERED_EVENTS and event[0] == "out":
            return
        self.events.append(event)
        self.ready.set()


class AgentService:
    """The node agent behind the actor: plain async methods (the Ray wrapper is below)."""

    def __init__(self, blob_url: str, environment: dict[str, str], ray_node_id: str) -> None:
        os.environ.update(environment)  # the object store's endpoint and credentials
        from homeport.agent.memory_snapshots import MemorySnapshotRuntime
        from homeport.agent.network import BridgeNetwork
        from homeport.agent.network import available as network_available
        from homeport.agent.sandbox import SandboxRuntime
        from homeport.agent.snapshot_store import SnapshotStore
        from homeport.agent.zygote_pool import ZygotePool
        from homeport.images.client_package import ClientPackages
        from homeport.objectstore import LocalCopies, ObjectStore

        if _shares_init_mount_namespace():
            # A Ray worker has threads: it cannot leave the host's mount namespace itself.
            log.warning(
                "the node agent shares the host's mount namespace: its mounts would outlive it; start Ray "
                "on this node with `unshare --mount --propagation slave ray start ...`"
            )
        self.root = Path(os.environ.get("HOMEPORT_NODE_DIR", DEFAULT_NODE_DIR))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        node_id = os.environ.get("HOMEPORT_NODE_ID") or f"{socket.gethostname()}-{ray_node_id[:6]}"
        self.network = None
        subnet = os.environ.get("HOMEPORT_CONTAINER_SUBNET", "10.89.0.0/16")
        if subnet and network_available() is None:
            self.network = BridgeNetwork(os.environ.get("HOMEPORT_BRIDGE", "homeport0"), subnet)
            self.network.setup([])
        zygotes = None
        if os.environ.get("HOMEPORT_ZYGOTES", "1") != "0":
            (self.root / "zygotes").mkdir(exist_ok=True)
            zygotes = ZygotePool(self.root / "zygotes", self.network)
        store = ObjectStore(blob_url)
        self.store = store
        assets = ClusterAssets(self.root, LocalCopies(store), ClientPackages(self.root / "client-packages"))
        (self.root / "tasks").mkdir(exist_ok=True)
        self.agent = NodeAgent(
            MemorySnapshotRuntime(
                SandboxRuntime(self.network, zygotes),
                SnapshotStore(self.root / "memory-snapshots", shared=store),
            ),
            lambda task_id: self.root / "tasks" / task_id,
            assets,
            node_id,
        )
        self.owners: dict[str, str] = {}  # task id -> the replica that started it
        self.mailboxes: dict[str, _Mailbox] = {}
        self.blob_forwarders: dict[int, PortForwarder] = {}
        self._background: asyncio.Task[None] | None = None
        self.host = os.environ.get("HOMEPORT_NODE_HOST") or _node_ip()
        self.router: NodeRouter | None = None
        self._router_lock = asyncio.Lock()  # replicas may say hello at once
        log.info("homeport node agent %s ready in %s", node_id, self.root)

    def _mailbox(self, owner: str) -> _Mailbox:
        return self.mailboxes.setdefault(owner, _Mailbox())

    async def hello(self, blob_port: int, blob_target: str) -> NodeInfo:
        """A replica introduces itself: containers reach its blob URLs on this node's bridge
        address at `blob_port` (forwarded to `blob_target`, host:port)."""
        if self._background is None:
            self._background = asyncio.get_running_loop().create_task(self.agent.run())
        gateway = self.network.gateway if self.network is not None else None
        if gateway is not None and blob_port not in self.blob_forwarders:
            forwarder = PortForwarder(gateway, blob_port, blob_target)
            await forwarder.start()
            self.blob_forwarders[blob_port] = forwarder
            assert self.network is not None
            await asyncio.to_thread(self.network.setup, [blob_port])
        return NodeInfo(self.agent.node_id, gateway, self.host)

    async def serve_sandboxes(self, setup: RouterSetup) -> tuple[str, str]:
        """The node's task command router (started by the first replica to ask; later ones
        only leave their callback address) and its tunnels' TLS; returns the router's URLs
        for clients and for the node's own containers."""
        async with self._router_lock:
            if self.router is None:
                self.router = await self._start_router(setup)
        self.router.replicas[setup.owner] = setup.callback_url
        return self.router.url, self.router.container_url

    async def _start_router(self, setup: RouterSetup) -> NodeRouter:
        """The router and tunnels' TLS, once per node (a failure leaves nothing bound)."""
        certificate, key = setup.certificate
        # Client 1.6.4 makes every tunnel URL https://, and dials the router with TLS
        # unless its server URL is on localhost.
        tunnels = tls_context(self.root / "tls", certificate, key, ())
        self.agent.tunnel_gate = TunnelGate(self.host, lambda: tunnels)
        grpc_tls = tls_context(self.root / "tls", certificate, key, ("h2",))
        tls = grpc_tls if setup.router_tls else None
        router = NodeRouter(
            RouterCredentials(setup.signing_key), self.agent, self.agent.sandbox_activity, self.owners.get
        )
        try:
            await router.start(self.host, int(os.environ.get("HOMEPORT_ROUTER_PORT", "0")), tls)
            if self.network is not None:  # the modal client in this node's containers
                port = await router.start_for_containers(self.network.gateway, grpc_tls)
                await asyncio.to_thread(self.network.setup, [port])
                self.agent.trust_bundle = write_bundle(setup.ca, self.root / "tls" / "ca-bundle.pem")
        except BaseException:
            await router.close()
            raise
        return router

    async def reserve(
        self, task_id: str, memory_mib: int, gpu_options: list[tuple[str, int]]
    ) -> list[int] | None:
        return self.agent.reserve(task_id, memory_mib, gpu_options)

    async def release(self, task_id: str) -> None:
        self.agent.release(task_id)

    async def start(self, order: ContainerOrder, owner: str) -> str | None:
        """Start a container; None once it runs, else why it could not (the reservation is
        released then). Its output and its end arrive as `owner`'s events."""
        mailbox = self._mailbox(owner)
        self.owners[order.task_id] = owner

        def on_output(fd: int, text: str) -> None:
            mailbox.put(("out", order.task_id, fd, text))

        try:
            await self.agent.start(order, on_output)
        except ContainerStartError as error:
            self.owners.pop(order.task_id, None)
            return str(error)
        except Exception as error:
            self.owners.pop(order.task_id, None)
            log.exception("container %s could not start", order.task_id)
            return f"could not start a container on node {self.agent.node_id}: {error!r}"
        asyncio.get_running_loop().create_task(self._watch(order.task_id, mailbox))
        return None

    async def _watch(self, task_id: str, mailbox: _Mailbox) -> None:
        try:
            ended = await self.agent.wait(task_id)
        except Exception as error:
            ended = ContainerExit(137, f"the node lost track of it: {error!r}", True)
        self.owners.pop(task_id, None)
        mailbox.put(("exit", task_id, ended))

    async def events(self, owner: str, timeout: float) -> tuple[list[tuple], NodeInventory, list[str]]:  # type: ignore[type-arg]
        """`owner`'s events since its last call (waiting up to `timeout` for one), with the
        node's inventory and which containers hold GPUs."""
        mailbox = self._mailbox(owner)
        if not mailbox.events:
            try:
                await asyncio.wait_for(mailbox.ready.wait(), timeout)
            except TimeoutError:
                pass
        events, mailbox.events = mailbox.events, []
        mailbox.ready.clear()
        return events, self.agent.inventory(), sorted(self.agent.gpu_holders())

    async def checkpoint(self, task_id: str) -> None:
        self.agent.checkpoint(task_id)

    async def interrupt(self, task_id: str) -> None:
        self.agent.interrupt(task_id)

    async def kill(self, task_id: str) -> None:
        self.agent.kill(task_id)

    async def prewarm(self, order: ZygoteOrder) -> None:
        await self.agent.prewarm(order)

    async def tunnels(self, task_id: str) -> list[Tunnel]:
        return self.agent.tunnels(task_id)

    async def sandbox_idle_s(self, task_id: str) -> float | None:
        return self.agent.sandbox_activity.idle_s(task_id)

    async def sandbox_output(self, task_id: str, fd: int, offset: int, wait_s: float) -> OutputChunks | None:
        return await read_output(self.agent.sandbox(task_id), fd, offset, wait_s)

    async def sandbox_stdin(self, task_id: str, index: int, data: bytes, eof: bool) -> str | None:
        return write_v1_stdin(self.agent.sandbox(task_id), index, data, eof)

    async def upload_writable_layer(self, task_id: str, key: str) -> str | None:
        """A running container's writable layer, packed into the object store at `key`
        (Sandbox.snapshot_filesystem); None when uploaded, else why not."""
        staging = Path(tempfile.mkdtemp(prefix="snapshot-", dir=self.root / "tasks"))
        try:
            (staging / "fs").mkdir()
            await self.agent.copy_writable_layer(task_id, staging / "fs")
            archive = staging / "layer.tar"
            await asyncio.to_thread(pack, staging / "fs", archive)
            await asyncio.to_thread(self.store.upload, key, archive)
        except (LookupError, RuntimeError) as error:
            return str(error)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        return None

    async def commit_volume(self, task_id: str, volume_id: str) -> tuple[list[Entry], list[str]] | None:
        return await self.agent.commit_volume(task_id, volume_id)

    async def refresh_volume(self, task_id: str, volume_id: str, committed: list[Entry]) -> None:
        await self.agent.refresh_volume(task_id, volume_id, committed)

    async def stop_owned(self, owner: str, grace_s: float) -> None:
        """Stop the containers a replica started (it is shutting down, or it is gone and
        another replica took over its inputs): SIGINT, then SIGKILL after `grace_s`."""
        mine = [task_id for task_id, held in self.owners.items() if held == owner]
        for task_id in mine:
            self.agent.interrupt(task_id)
        deadline = asyncio.get_running_loop().time() + grace_s
        while any(task_id in self.owners for task_id in mine):
            if asyncio.get_running_loop().time() > deadline:
                for task_id in mine:
                    self.agent.kill(task_id)
                break
            await asyncio.sleep(0.1)


def _node_ip() -> str:
    import ray

    return str(ray.util.get_node_ip_address())


def _shares_init_mount_namespace() -> bool:
    try:
        return os.readlink("/proc/self/ns/mnt") == os.readlink("/proc/1/ns/mnt")
    except OSError:
        return False  # init's namespace cannot be read here: nothing to compare


def actor_class():  # type: ignore[no-untyped-def]
    """The Ray actor class (made on first use: importing Ray is slow, and one machine never needs it)."""
    import ray

    # An async actor: every method runs on its event loop, many at once (events long-polls).
    return ray.remote(num_cpus=0, max_concurrency=1000, max_restarts=0)(AgentService)

"""Everything a request handler may use, assembled once per server process."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets as random_secrets

import sqlalchemy as sa

from homeport.agent.assets import LocalAssets
from homeport.agent.gvisor import GvisorRuntime
from homeport.agent.memory_snapshots import MemorySnapshotRuntime
from homeport.agent.network import BridgeNetwork
from homeport.agent.network import available as network_available
from homeport.agent.node import NodeAgent
from homeport.agent.ray_agent import RouterSetup
from homeport.agent.router import RouterCredentials
from homeport.agent.runtime import Runtime
from homeport.agent.sandbox import SandboxRuntime
from homeport.agent.snapshot_store import SnapshotStore
from homeport.agent.tunnels import TunnelGate
from homeport.agent.zygote_pool import ZygotePool
from homeport.config import Settings
from homeport.images.bases import BaseCache
from homeport.images.client_package import ClientPackages
from homeport.images.layers import LayerStore
from homeport.objectstore import LocalCopies, ObjectStore
from homeport.server.auth import AuthService
from homeport.server.blobstore import LocalBlobStore
from homeport.server.cluster import LayerPublisher, RayCluster
from homeport.server.dashboard.signin import Signer
from homeport.server.metrics import Metrics, StateCollector
from homeport.server.nodes import LocalNode, Placement
from homeport.server.notify import Notifier
from homeport.server.orders import OrderBuilder
from homeport.server.ownership import OwnershipCheck
from homeport.server.replicas import Replicas
from homeport.server.sandboxes import Sandboxes
from homeport.server.scheduler import Scheduler
from homeport.server.services import dicts as dict_contents
from homeport.server.services import queues as queue_contents
from homeport.server.services import secrets as secret_contents
from homeport.server.services import volumes as volume_contents
from homeport.server.services.apps import AppService
from homeport.server.services.billing import Rates
from homeport.server.services.calls import CallService
from homeport.server.services.dicts import DictService
from homeport.server.services.environments import EnvironmentService
from homeport.server.services.image_inventory import record_layer_dir
from homeport.server.services.image_snapshots import FilesystemSnapshots
from homeport.server.services.images import ImageService
from homeport.server.services.logs import LogService
from homeport.server.services.mounts import MountService
from homeport.server.services.nodes import NodeRegistry
from homeport.server.services.queues import QueueService
from homeport.server.services.secrets import SecretService
from homeport.server.services.storage import StorageObjectService
from homeport.server.services.usage import UsageService
from homeport.server.services.volumes import VolumeService
from homeport.server.services.web import WebEndpointService
from homeport.server.store import db, schema
from homeport.tls import CertificateAuthority

BLOB_SIGNING_KEY = "blob_signing_key"
DASHBOARD_SIGNING_KEY = "dashboard_signing_key"
ROUTER_SIGNING_KEY = "router_signing_key"  # sandbox credentials (agent/router.py)
TLS_AUTHORITY = "tls_authority"  # cluster mode: the CA every replica issues certificates from
# Client 1.6.4 (`Client._is_localhost`) dials the router over plain HTTP/2 only when its
# server URL names one of these; otherwise it wants `https` with a certificate the system's
# CA store trusts (SSL_CERT_FILE pointing at Homeport's bundle does: see tls.py).
LOCALHOST_NAMES = {"localhost", "127.0.0.1", "::1"}
log = logging.getLogger("homeport.server")


def shared_setting(engine: sa.Engine, key: str, make: str) -> str:
    """A server-wide value stored in the database, created on first use."""
    s = schema.server_settings
    with engine.begin() as connection:
        row = connection.execute(sa.select(s.c.value).where(s.c.key == key)).first()
        if row is not None:
            return str(row.value)
        connection.execute(s.insert().values(key=key, value=make))
        return make


@dataclasses.dataclass
class ServerState:
    settings: Settings
    engine: sa.Engine
    notifier: Notifier
    auth: AuthService
    environments: EnvironmentService
    apps: AppService
    calls: CallService
    logs: LogService
    blobs: LocalBlobStore
    mounts: MountService
    images: ImageService
    scheduler: Scheduler
    metrics: Metrics
    ownership: OwnershipCheck
    usage: UsageService
    rates: Rates
    dashboard_signer: Signer
    agent: (
        NodeAgent  # this machine's node agent (all containers on one machine; image build steps in a cluster)
    )
    placement: Placement
    storage: StorageObjectService
    dicts: DictService
    queues: QueueService
    secrets: SecretService
    volumes: VolumeService
    web: WebEndpointService
    # modal.Sandbox; the task command router beside each node's sandboxes (this machine's:
    # main.py; a cluster node's: agent/node_router.py) takes credentials signed with this.
    sandboxes: Sandboxes
    router_credentials: RouterCredentials
    # Homeport's CA: TLS for sandbox tunnels and a router clients reach off localhost (tls.py).
    authority: CertificateAuthority

    network: BridgeNetwork | None = None
    cluster: RayCluster | None = None  # cluster mode: the Ray nodes
    replicas: Replicas | None = None  # cluster mode: the other control-plane replicas

    def blob_base_url(self, task_id: str | None) -> str:
        """Where blob and volume URLs point: a container (`task_id`) reaches the HTTP
        listener through its node's bridge address, everyone else at the server's own."""
        if task_id is not None:
            running = self.scheduler.container(task_id)
            node = running.node if running is not None else self.placement.builds
            base = node.container_blob_base() if node is not None else None
            if base is not None:
                return base
        return self.settings.blob_base_url

    def app_page_url(self, app_id: str) -> str:
        """The client's "View run at" link: the app's dashboard page (redirected from here)."""
        return f"{self.settings.blob_base_url}/apps/{app_id}"


def _function_names(apps: AppService, auth: AuthService, function_id: str) -> tuple[str, str, str]:
    """(workspace, app, function) names of a function, for metric labels."""
    function = apps.function(function_id)
    app = apps.get("", function.app_id)
    return auth.workspace_name(app.workspace_id), app.name or app.description, function.tag


def open_engine(settings: Settings) -> sa.Engine:
    settings.layout.ensure()
    engine = db.create_engine(settings.effective_database_url)
    db.upgrade(engine)
    return engine


def open_server_engine(settings: Settings) -> sa.Engine:
    """Upgrade the schema (a synchronous engine, then closed), then open the engine the
    server's loop uses (`db.create_server_engine`)."""
    open_engine(settings).dispose()
    return db.create_server_engine(settings.effective_database_url)


def build_state(settings: Settings, engine: sa.Engine | None = None) -> ServerState:
    engine = engine or open_server_engine(settings)
    layout = settings.layout
    notifier = Notifier()
    metrics = Metrics()
    auth = AuthService(engine)
    auth.ensure_default_workspace()
    store = None
    if settings.blob_url:
        store = ObjectStore(settings.blob_url)
        store.check()
    shared = LocalCopies(store) if store is not None else None
    blobs = LocalBlobStore(
        layout,
        engine,
        settings.blob_base_url,
        shared_setting(engine, BLOB_SIGNING_KEY, random_secrets.token_hex(32)).encode(),
        settings.limits.blob_max_bytes,
        shared,
    )
    apps = AppService(engine, notifier)
    calls = CallService(engine, notifier, metrics)
    ownership = OwnershipCheck(engine)
    calls.created = ownership.remember
    logs = LogService(engine, notifier)
    mounts = MountService(engine, blobs)
    storage = StorageObjectService(engine)
    storage.on_delete("dict", dict_contents.remove_contents)
    storage.on_delete("queue", queue_contents.remove_contents)
    storage.on_delete("secret", secret_contents.remove_contents)
    storage.on_delete("volume", volume_contents.remove_contents)
    volumes = VolumeService(engine, layout, shared)
    secret_service = SecretService(engine, secret_contents.load_key(layout.secret_key))
    queues = QueueService(engine, notifier)
    network = None
    if settings.container_subnet:
        unavailable = network_available()
        if unavailable is None:
            network = BridgeNetwork(os.environ.get("HOMEPORT_BRIDGE", "homeport0"), settings.container_subnet)
        else:
            log.warning("containers share the host's network: %s", unavailable)
    # gVisor containers use runsc's own networking (host or none); build steps and sandbox
    # containers get namespaces on the bridge.
    zygotes = ZygotePool(layout.zygotes, network) if settings.zygotes else None
    runtime: Runtime = (
        GvisorRuntime()
        if settings.runtime == "gvisor"
        else MemorySnapshotRuntime(SandboxRuntime(network, zygotes), SnapshotStore(layout.memory_snapshots))
    )
    nodes = NodeRegistry(engine)
    # Replicas of a cluster share one CA and one router signing key (the database's).
    authority = CertificateAuthority(
        settings.data_dir / "tls",
        (lambda offered: shared_setting(engine, TLS_AUTHORITY, offered)) if settings.ray_address else None,
    )
    router_credentials = RouterCredentials(
        shared_setting(engine, ROUTER_SIGNING_KEY, random_secrets.token_hex(32)).encode()
    )
    agent = NodeAgent(
        runtime,
        layout.task_dir,
        LocalAssets(
            lambda chain: images.layers.lower_dirs(chain),
            blobs.path,
            ClientPackages(settings.cache.client_packages),
            volumes.contents,
            layout.control_socket,
        ),
        # In a cluster this machine only runs image build steps: not a node placement uses.
        report=None if settings.ray_address else nodes.report,
        started=lambda kind, seconds: metrics.container_started(agent.node_id, kind, seconds),
        tunnel_gate=TunnelGate(settings.host, lambda: authority.server_context([settings.host])),
    )
    for private in (settings.cache.root, settings.layers):
        private.mkdir(parents=True, exist_ok=True)
        os.chmod(private, 0o700)  # image files (setuid binaries included) are not for other users
    bases = BaseCache(settings.cache.bases, settings.oci_mirror)
    record_layer_dir(engine, settings.layers)
    images = ImageService(
        engine,
        notifier,
        LayerStore(settings.layers, bases),
        bases,
        mounts,
        secret_service,
        apps,
        blobs.path,
        layout.image_contexts,
        network,
        metrics,
    )
    usage = UsageService(engine)
    placement = Placement()
    local = LocalNode(
        agent,
        lambda: None if network is None else f"http://{network.gateway}:{settings.effective_blob_port}",
    )
    placement.builds = local
    server_id = "sv-" + random_secrets.token_hex(8)
    control_address = settings.server_address
    cluster = None
    if settings.ray_address:
        assert store is not None  # the CLI insists on --blob-url with --ray-address
        cluster = RayCluster(
            settings.ray_address,
            placement,
            settings.blob_url or "",
            LayerPublisher(images.layers, store),
            server_id,
            settings.effective_blob_port,
            f"{settings.host}:{settings.effective_blob_port}",
            {k: v for k, v in os.environ.items() if k.startswith("AWS_")},
            nodes.report,
            lambda hosts: RouterSetup(
                server_id,
                f"http://{settings.host}:{settings.effective_blob_port}",
                router_credentials.key,
                authority.server_pems(hosts),
                authority.ca_path.read_bytes(),
                router_tls=settings.host not in LOCALHOST_NAMES,
            ),
        )
    else:
        placement.add(local)  # one machine: it runs everything
    scheduler = Scheduler(
        engine=engine,
        notifier=notifier,
        apps=apps,
        calls=calls,
        logs=logs,
        placement=placement,
        orders=OrderBuilder(apps, storage, mounts, images, secret_service, volumes, control_address),
        images=images,
        max_containers=settings.max_containers,
        limits=settings.limits,
        storage=storage,
        queues=queues,
        volumes=volumes,
        usage=usage,
    )
    scheduler.forget_credential = auth.forget_task
    scheduler.remember_credential = auth.remember_task
    scheduler.server_id = server_id
    sandboxes = Sandboxes(
        engine,
        notifier,
        images,
        secret_service,
        placement,
        FilesystemSnapshots(engine, images.layers, notifier),
        volumes,
        logs,
        settings.limits.container_log_bytes,
        server_id,
    )
    sandboxes.created = ownership.remember
    replicas = None
    if cluster is not None:
        cluster_nodes = cluster

        async def settle_gone(gone: str) -> None:
            await cluster_nodes.stop_everywhere(gone)
            sandboxes.recover_replica(gone)

        replicas = Replicas(engine, server_id, control_address, calls.requeue_claimed, settle_gone)
        apps.replicated = True
        scheduler.is_home = replicas.is_home
    metrics.resolve_names = lambda function_id: _function_names(apps, auth, function_id)
    metrics.watch(StateCollector(calls.pending_counts, nodes.list, metrics.names))
    images.run_build_function = scheduler.run_build_function
    return ServerState(
        settings=settings,
        engine=engine,
        notifier=notifier,
        auth=auth,
        environments=EnvironmentService(engine),
        apps=apps,
        calls=calls,
        logs=logs,
        blobs=blobs,
        mounts=mounts,
        images=images,
        scheduler=scheduler,
        metrics=metrics,
        ownership=ownership,
        usage=usage,
        rates=Rates.load(settings.rates_file),
        dashboard_signer=Signer(
            shared_setting(engine, DASHBOARD_SIGNING_KEY, random_secrets.token_hex(32)).encode()
        ),
        agent=agent,
        placement=placement,
        storage=storage,
        dicts=DictService(engine),
        queues=queues,
        secrets=secret_service,
        volumes=volumes,
        web=WebEndpointService(engine),
        network=network,
        sandboxes=sandboxes,
        authority=authority,
        router_credentials=router_credentials,
        cluster=cluster,
        replicas=replicas,
    )

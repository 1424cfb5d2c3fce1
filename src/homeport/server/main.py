"""Assembles the server: gRPC for the modal client, HTTP for blobs, the scheduler."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web
from grpclib.server import Server

from homeport.agent.router import CommandRouter, listen
from homeport.config import Settings
from homeport.server.blobstore import blob_routes, volume_routes
from homeport.server.connections import CONTAINER_SOCKET_LIMITS, GuardedServer
from homeport.server.dashboard.pages import Dashboard
from homeport.server.gateway import Gateway, gateway_middleware
from homeport.server.metrics import serve_metrics
from homeport.server.notify import PostgresRelay
from homeport.server.retention import RetentionService
from homeport.server.router_callbacks import router_callback_routes
from homeport.server.servicer import HomeportServicer
from homeport.server.state import LOCALHOST_NAMES, ServerState, build_state
from homeport.tls import system_bundle

log = logging.getLogger("homeport.server")


def read_client_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
    return values


def write_client_env(state: ServerState) -> None:
    """Write DIR/client.env for the default workspace, keeping a still-valid token."""
    path = state.settings.layout.client_env
    current = read_client_env(path)
    token_id, secret = current.get("MODAL_TOKEN_ID", ""), current.get("MODAL_TOKEN_SECRET", "")
    try:
        state.auth.verify_token(token_id, secret)
    except Exception:
        token_id, secret = state.auth.create_token("main", label="client.env")
    content = (
        f"MODAL_SERVER_URL={state.settings.server_url}\n"
        f"MODAL_TOKEN_ID={token_id}\n"
        f"MODAL_TOKEN_SECRET={secret}\n"
    )
    temporary = path.with_suffix(".tmp")
    temporary.write_text(content)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def postgres_dsn(engine) -> str:  # type: ignore[no-untyped-def]
    """The engine's database as a libpq connection string (for LISTEN/NOTIFY)."""
    return str(engine.url.set(drivername="postgresql").render_as_string(hide_password=False))


async def start_router(state: ServerState) -> list[Server]:
    """The task command router for this machine's sandboxes (one machine; in a cluster each
    node runs its own, agent/node_router.py), on a port of its own (the client dials it at
    the URL SandboxCreateV2 hands out): plain HTTP/2 when the server is on localhost, TLS
    with a certificate from Homeport's CA otherwise. A second listener, always TLS, serves
    the modal client inside function containers (agent/trust.py) on the bridge address."""
    sandboxes = state.sandboxes
    router = CommandRouter(
        state.router_credentials,
        state.agent.sandbox,
        sandboxes.exec_environment,
        state.agent.sandbox_activity.touch,
        sandboxes.snapshot_filesystem,
    )
    host = state.settings.host
    tls = state.authority.server_context([host], alpn=("h2",)) if host not in LOCALHOST_NAMES else None
    server, url = await listen(router, host, 0, tls)
    blob_port = state.settings.effective_blob_port
    if state.network is not None:  # the bridge (and its address) before listening there
        await asyncio.to_thread(state.network.setup, [blob_port])
    inside = state.network.gateway if state.network is not None else host
    for_containers, container_url = await listen(
        router, inside, 0, state.authority.server_context([inside], alpn=("h2",))
    )
    if state.network is not None:
        port = int(container_url.rsplit(":", 1)[1])
        await asyncio.to_thread(state.network.setup, [blob_port, port])
    local = state.placement.builds
    assert local is not None
    local.router_url, local.container_router_url = url, container_url
    if system_bundle() is not None:  # else a bundle of Homeport's CA alone: see agent/trust.py
        state.agent.trust_bundle = state.authority.bundle_path
    log.info("sandbox command router at %s (for containers: %s)", url, container_url)
    return [server, for_containers]


async def serve(settings: Settings) -> None:
    state = build_state(settings)
    # On the loop, before anything issues a certificate: in a cluster it reads the
    # replicas' shared CA from the database (the engine's calls are hosted on this loop).
    state.authority.ensure()
    relay = None
    if state.cluster is not None and state.replicas is not None:
        # Other replicas may be running: only what a gone replica owned is recovered (replicas.py).
        await asyncio.to_thread(state.cluster.connect)
        state.replicas.register()
        relay = PostgresRelay(postgres_dsn(state.engine), state.notifier, asyncio.get_running_loop())
        relay.start()
    else:
        state.scheduler.recover()
        state.sandboxes.recover()
    routers = await start_router(state) if state.cluster is None else []
    servicer = HomeportServicer(state)
    grpc_server = GuardedServer([servicer])
    await grpc_server.start(settings.host, settings.port)
    socket_path = settings.layout.control_socket
    if len(str(socket_path)) > 100:
        raise SystemExit(
            f"the data dir path is too long for a Unix socket ({socket_path}); use a shorter --data-dir"
        )
    socket_path.unlink(missing_ok=True)
    container_server = GuardedServer([servicer], CONTAINER_SOCKET_LIMITS)
    await container_server.start(path=str(socket_path))

    http_app = web.Application(client_max_size=0, middlewares=[gateway_middleware(Gateway(state))])
    http_app.add_routes(blob_routes(state.blobs))
    http_app.add_routes(volume_routes(state.blobs, state.volumes))
    http_app.add_routes(Dashboard(state, state.dashboard_signer).routes())
    if state.cluster is not None:  # what nodes' routers ask (one machine's router is in-process)
        http_app.add_routes(router_callback_routes(state.router_credentials, state.sandboxes))
    runner = web.AppRunner(http_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.effective_blob_port)
    await site.start()
    if state.network is not None:
        # Containers on the container network reach blob URLs on the bridge address, and
        # only this port of the host (the control plane is their Unix socket).
        await asyncio.to_thread(state.network.setup, [settings.effective_blob_port])
        await web.TCPSite(runner, state.network.gateway, settings.effective_blob_port).start()

    metrics_runner = None
    if settings.metrics_port:
        metrics_runner = await serve_metrics(
            state.metrics, settings.host, settings.metrics_port, state.engine
        )
        log.info("metrics at http://%s:%d/metrics", settings.host, settings.metrics_port)
    write_client_env(state)
    log.info(
        "sandbox tunnels (and the router off localhost) use TLS from Homeport's CA: trust it with "
        "SSL_CERT_FILE=%s",
        state.authority.bundle_path,
    )
    log.info(
        "homeport serving gRPC on %s, blobs on %s, data in %s",
        settings.server_url,
        settings.blob_base_url,
        settings.layout.root,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            scheduler_task = group.create_task(state.scheduler.run())
            agent_task = group.create_task(state.agent.run())
            images_task = group.create_task(state.images.run())
            retention_task = group.create_task(
                RetentionService(state.engine, state.blobs, settings.limits).run()
            )
            tasks = [scheduler_task, agent_task, images_task, retention_task]
            if state.cluster is not None and state.replicas is not None:
                tasks.append(group.create_task(state.cluster.run()))
                tasks.append(group.create_task(state.replicas.run()))
            await stop.wait()
            log.info("shutting down")
            for task in tasks:
                task.cancel()
    finally:
        state.sandboxes.stop_all()
        for router in routers:
            router.close()
        await state.scheduler.shutdown()
        if state.replicas is not None:
            state.replicas.forget()
        if relay is not None:
            relay.stop()
        for server in (grpc_server, container_server):
            server.close()
            await server.wait_closed()
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if state.network is not None:
            state.network.forget_ports()  # the blob port, the sandbox router's for containers
        state.engine.dispose()

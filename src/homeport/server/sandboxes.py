"""Sandboxes (`modal.Sandbox`, the V2 API of client 1.6.4): their records, their start on
a node, their end and its result.

A sandbox is a container whose first process is the supervisor (agent/in_sandbox), which
runs the entrypoint and later execs; the node holds its processes (`NodeAgent.sandbox`)
and the task command router beside it serves their stdio (agent/router.py). Here: the row
in `sandboxes`, the reservation and start, the deadline (`timeout` -> 124), `terminate()`
(-> 137), and the result every waiter reads. Results follow the client's reading
(modal/sandbox/_common.py): status TIMEOUT and TERMINATED carry no exit code; SUCCESS
(exit 0) and FAILURE carry it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from grpclib import GRPCError, Status
from modal_proto import api_pb2

from homeport import ids
from homeport.agent.order import ContainerOrder, ReadinessProbe, VolumeRef
from homeport.agent.router import terminal_settings
from homeport.agent.runtime import ContainerStartError
from homeport.images.config import ImageConfig
from homeport.server import errors
from homeport.server.nodes import Node, NodeLost, Placement
from homeport.server.notify import Notifier
from homeport.server.orders import gpu_environment, image_environment
from homeport.server.running import container_log_writer, redactor
from homeport.server.sandbox_definition import (
    cidrs,
    egress_cidrs,
    readiness_probe,
    refuse_unsupported,
)
from homeport.server.sandbox_records import SandboxRecords
from homeport.server.services.functions import gpu_request
from homeport.server.services.image_snapshots import FilesystemSnapshots
from homeport.server.services.images import ImageService
from homeport.server.services.logs import LogService
from homeport.server.services.secrets import SecretService
from homeport.server.services.volumes import VolumeService
from homeport.server.store import db, schema

log = logging.getLogger("homeport.sandboxes")

s = schema.sandboxes
GENERIC = api_pb2.GenericResult
DEFAULT_MEMORY_MIB = 128


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a sandbox's definition asks for, checked (Sandboxes._plan)."""

    chain: list[str]
    config: ImageConfig
    entrypoint: list[str]
    environment: dict[str, str]
    secrets: dict[str, str]
    memory_mib: int
    gpu_options: list[tuple[str, int]]
    volumes: tuple[VolumeRef, ...]
    probe: ReadinessProbe | None
    egress_cidrs: tuple[str, ...] | None
    inbound_cidrs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Running:
    task_id: str
    node: Node
    chain: list[str]  # its image's layers, for snapshot_filesystem
    config: ImageConfig


class Sandboxes(SandboxRecords):
    def __init__(
        self,
        engine: sa.Engine,
        notifier: Notifier,
        images: ImageService,
        secrets: SecretService,
        placement: Placement,
        snapshots: FilesystemSnapshots,
        volumes: VolumeService,
        logs: LogService,
        log_limit_bytes: int,
        server_id: str = "",
    ) -> None:
        super().__init__(engine, notifier)
        self.images = images
        self.secrets = secrets
        self.placement = placement
        self.snapshots = snapshots
        self.volumes = volumes
        self.logs = logs  # the entrypoint's output, for `modal container logs`
        self.log_limit_bytes = log_limit_bytes
        self.server_id = server_id  # this replica (cluster mode): it watches what it started
        self.running: dict[str, _Running] = {}  # by sandbox id: those this replica started
        self._ending: dict[str, int] = {}  # sandbox id -> the status it is being ended with
        self.created: Callable[[str, str], None] = lambda sandbox_id, workspace_id: None

    # --- create -------------------------------------------------------------------------------

    async def create(
        self,
        workspace_id: str,
        app_id: str,
        environment_name: str,
        definition: api_pb2.Sandbox,
        secret_sources: list[api_pb2.SecretSource],
        tags: list[api_pb2.SandboxTag],
        idempotency_key: str,
        v1: bool = False,
        near_node: str | None = None,
    ) -> tuple[str, str]:
        """(sandbox id, task id) of a started sandbox; the same for a retried request. `v1`:
        made through the V1 RPCs (client 1.6.4 uses them for gpu= and pty=True), so its ids
        have the V1 shapes. `near_node`: made from a container there, so placed there when
        it has room (that container reaches its own node's sandboxes)."""
        if idempotency_key:
            with self.engine.connect() as connection:
                row = connection.execute(
                    sa.select(s.c.id, s.c.task_id).where(
                        s.c.idempotency_key == idempotency_key, s.c.workspace_id == workspace_id
                    )
                ).first()
            if row is not None:
                return row.id, row.task_id
        plan = await self._plan(workspace_id, definition, secret_sources, v1)
        sandbox_id, task_id = (
            (ids.new_v1_sandbox_id(), ids.new_id("task"))
            if v1
            else (ids.new_id("sandbox"), ids.new_sandbox_task_id())
        )
        name = definition.name if definition.HasField("name") and definition.name else None
        node, devices = await self._reserve(task_id, plan, near_node)
        try:
            self._insert(
                workspace_id, app_id, environment_name, name, tags, idempotency_key, sandbox_id, task_id,
                definition.image_id, node.node_id,
            )  # fmt: skip
        except BaseException:
            node.release(task_id)
            raise
        self.created(sandbox_id, workspace_id)
        order = self._order(task_id, app_id, workspace_id, definition, plan, devices)
        await self._start(sandbox_id, node, order, plan.secrets)
        self.running[sandbox_id] = _Running(task_id, node, plan.chain, plan.config)
        idle_s = definition.idle_timeout_secs if definition.HasField("idle_timeout_secs") else 0
        asyncio.get_running_loop().create_task(
            self._watch(sandbox_id, task_id, node, definition.timeout_secs, idle_s)
        )
        return sandbox_id, task_id

    @staticmethod
    def _order(
        task_id: str,
        app_id: str,
        workspace_id: str,
        definition: api_pb2.Sandbox,
        plan: _Plan,
        devices: list[int],
    ) -> ContainerOrder:
        """What the node runs for this sandbox."""
        return ContainerOrder(
            task_id=task_id,
            app_id=app_id,
            function_id="",
            workspace_id=workspace_id,
            container_arguments=b"",
            started_environment=plan.environment,
            environment=gpu_environment(devices),
            layers=tuple(plan.chain),
            python_version="",
            working_dir=definition.workdir or plan.config.workdir or "/",
            network=definition.network_access.network_access_type != api_pb2.NetworkAccess.BLOCKED,
            egress_cidrs=plan.egress_cidrs,
            inbound_cidrs=plan.inbound_cidrs,
            memory_mib=plan.memory_mib,
            cpu_cores=definition.resources.milli_cpu / 1000 if definition.resources.milli_cpu else 0.0,
            gpu_devices=tuple(devices),
            sandbox_entrypoint=tuple(plan.entrypoint),
            readiness_probe=plan.probe,
            sandbox_terminal=terminal_settings(definition.pty_info) if definition.pty_info.pty_type else None,
            open_ports=tuple((spec.port, spec.unencrypted) for spec in definition.open_ports.ports),
            volumes=plan.volumes,
            commit_volumes_at_exit=True,
        )

    async def _plan(
        self,
        workspace_id: str,
        definition: api_pb2.Sandbox,
        secret_sources: list[api_pb2.SecretSource],
        v1: bool,
    ) -> _Plan:
        """What the definition asks for, checked before anything is recorded: bad input
        and requests no node could ever hold are refused here."""
        refuse_unsupported(definition, v1)
        try:
            chain, config = self.images.runtime_chain(definition.image_id)
        except LookupError as error:
            raise errors.failed_precondition(str(error)) from None
        entrypoint = list(definition.entrypoint_args) or [*config.entrypoint, *config.cmd]
        if not entrypoint:
            raise errors.invalid_argument(
                "the sandbox has no command and its image has none: pass one, e.g. Sandbox.create('sleep', 'infinity')"
            )
        secrets = await self.secret_environment(workspace_id, secret_sources)
        gpu = gpu_request(definition.resources)
        plan = _Plan(
            chain=chain,
            config=config,
            entrypoint=entrypoint,
            environment={**image_environment(config), **secrets},
            secrets=secrets,
            memory_mib=definition.resources.memory_mb or DEFAULT_MEMORY_MIB,
            gpu_options=[gpu] if gpu is not None else [],
            volumes=self._volume_refs(definition),
            probe=readiness_probe(definition),
            egress_cidrs=egress_cidrs(definition.network_access),
            inbound_cidrs=cidrs(definition.inbound_cidr_allowlist, "inbound_cidr_allowlist"),
        )
        refusal = self.placement.refusal(plan.memory_mib, plan.gpu_options)
        if refusal is not None:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"this sandbox cannot start: {refusal}")
        return plan

    async def _reserve(self, task_id: str, plan: _Plan, near_node: str | None) -> tuple[Node, list[int]]:
        """Room on a node, before anything is recorded: a sandbox no node has room for now
        leaves no trace."""
        placed = await self.placement.reserve(
            task_id, plan.memory_mib, plan.gpu_options, {}, 1_000_000, False, prefer=near_node
        )
        if placed is None:
            wanted = f"{plan.memory_mib} MiB" + "".join(
                f" and {count} {model} GPU(s)" for model, count in plan.gpu_options
            )
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"no node has {wanted} free for this sandbox now: retry once other sandboxes or "
                "containers have ended, or ask for less",
            )
        return placed

    async def _start(
        self, sandbox_id: str, node: Node, order: ContainerOrder, secrets: dict[str, str]
    ) -> None:
        """Start it on its node; a failure (or a cancelled request) records its result and
        gives back its room (the node does too; a remote one may not have got the order)."""
        try:
            write_log = container_log_writer(
                self.logs, order.app_id, order.task_id, None, self.log_limit_bytes
            )
            redact = redactor(secrets.values())
            await node.start(order, lambda fd, text: write_log(fd, redact(text)))
        except (ContainerStartError, TimeoutError, NodeLost) as error:
            node.release(order.task_id)
            self._finish(
                sandbox_id, GENERIC(status=GENERIC.GENERIC_STATUS_FAILURE, exitcode=1, exception=str(error))
            )
            raise errors.failed_precondition(f"the sandbox could not start: {error}") from None
        except BaseException as error:  # cancelled meanwhile, or a fault: the row must not stay running
            node.kill(order.task_id)  # a remote node may have started it all the same
            node.release(order.task_id)
            failed = GENERIC(
                status=GENERIC.GENERIC_STATUS_FAILURE, exitcode=1, exception=f"not started: {error!r}"
            )
            self._finish(sandbox_id, failed)
            raise

    def _volume_refs(self, definition: api_pb2.Sandbox) -> tuple[VolumeRef, ...]:
        """Each volume as committed now; what the sandbox changes is committed when it ends."""
        return tuple(
            VolumeRef(
                mount.volume_id,
                mount.mount_path,
                mount.read_only,
                tuple(self.volumes.entries(mount.volume_id).values()),
            )
            for mount in definition.volume_mounts
        )

    def _insert(
        self,
        workspace_id: str,
        app_id: str,
        environment_name: str,
        name: str | None,
        tags: list[api_pb2.SandboxTag],
        idempotency_key: str,
        sandbox_id: str,
        task_id: str,
        image_id: str,
        node_id: str,
    ) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    s.insert().values(
                        id=sandbox_id,
                        workspace_id=workspace_id,
                        app_id=app_id,
                        environment_name=environment_name,
                        name=name,
                        tags=json.dumps({tag.tag_name: tag.tag_value for tag in tags}),
                        task_id=task_id,
                        idempotency_key=idempotency_key or None,
                        created_at=time.time(),
                        image_id=image_id,
                        node_id=node_id,
                        server_id=self.server_id or None,
                    )
                )
        except sa.exc.IntegrityError:
            raise errors.already_exists(
                f"a sandbox named {name!r} is already running in this app; pick another name or terminate it first"
            ) from None

    async def secret_environment(
        self, workspace_id: str, sources: list[api_pb2.SecretSource]
    ) -> dict[str, str]:
        """Secrets and inline env=, in the order given: later ones win."""
        environment: dict[str, str] = {}
        for source in sources:
            if source.HasField("env"):
                environment.update(source.env.contents)
            elif source.secret_id:
                environment.update(self.secrets.values(workspace_id, source.secret_id))
        return environment

    # --- the end ------------------------------------------------------------------------------

    async def _end_when_idle(self, sandbox_id: str, task_id: str, node: Node, idle_s: int) -> None:
        """idle_timeout: no exec, no stdin, no open stream for `idle_s` seconds (the node's
        router counts its calls; before the first, the sandbox's start counts)."""
        started = time.monotonic()
        while True:
            try:
                quiet = await node.sandbox_idle_s(task_id)
            except Exception as error:  # the node is busy or going: ask again
                log.debug("sandbox %s: idle time unknown: %r", sandbox_id, error)
                quiet = 0.0
            if quiet is None:
                quiet = time.monotonic() - started
            if quiet >= idle_s:
                self._end(sandbox_id, GENERIC.GENERIC_STATUS_IDLE_TIMEOUT)
                return
            await asyncio.sleep(max(0.2, min(idle_s - quiet, 1.0)))

    async def _watch(self, sandbox_id: str, task_id: str, node: Node, timeout_s: int, idle_s: int) -> None:
        deadline = asyncio.get_running_loop().call_later(
            max(timeout_s, 1), self._end, sandbox_id, GENERIC.GENERIC_STATUS_TIMEOUT
        )
        idle = (
            asyncio.get_running_loop().create_task(self._end_when_idle(sandbox_id, task_id, node, idle_s))
            if idle_s
            else None
        )
        try:
            ended = await node.wait(task_id)
        finally:
            deadline.cancel()
            if idle is not None:
                idle.cancel()
            self.running.pop(sandbox_id, None)
        for volume_id, changed, removed in ended.volume_changes:
            try:
                await db.once_the_database_answers(
                    lambda: self.volumes.record(volume_id, list(changed), list(removed)),
                    f"sandbox {sandbox_id}'s changes to volume {volume_id}",
                )
            except Exception:  # the volume was deleted meanwhile, say: the sandbox still ends
                log.exception("sandbox %s: its changes to volume %s are lost", sandbox_id, volume_id)
        status = self._ending.pop(sandbox_id, None)
        if status == GENERIC.GENERIC_STATUS_IDLE_TIMEOUT:
            # Ended by the platform, like terminate(), but the client raises nothing for it.
            result = GENERIC(
                status=status,  # type: ignore[arg-type]
                exitcode=137,
                exception="the sandbox was idle past its idle_timeout",
            )
        elif status is not None:
            result = GENERIC(status=status, exception=_why(status))  # type: ignore[arg-type]
        elif ended.code == 0:
            result = GENERIC(status=GENERIC.GENERIC_STATUS_SUCCESS, exitcode=0)
        else:
            result = GENERIC(
                status=GENERIC.GENERIC_STATUS_FAILURE, exitcode=ended.code, exception=ended.reason or ""
            )
        await db.once_the_database_answers(
            lambda: self._finish(sandbox_id, result), f"the end of sandbox {sandbox_id}"
        )

    def _end(self, sandbox_id: str, status: int) -> None:
        running = self.running.get(sandbox_id)
        if running is not None and sandbox_id not in self._ending:
            self._ending[sandbox_id] = status
            running.node.kill(running.task_id)

    def node_of(self, row: sa.Row) -> Node | None:  # type: ignore[type-arg]
        """The node a running sandbox is on, whichever replica started it; None once it
        has finished or its node is gone."""
        return None if row.result is not None else self.node_it_ran_on(row)

    def node_it_ran_on(self, row: sa.Row) -> Node | None:  # type: ignore[type-arg]
        """Its node, running or finished (None once the node is gone)."""
        running = self.running.get(row.id)
        if running is not None:
            return running.node
        return self.placement.nodes.get(row.node_id) if row.node_id else None

    def router_url(self, row: sa.Row, caller_node: str | None = None) -> str:  # type: ignore[type-arg]
        """Where the client dials the sandbox's task command router: beside it, on its node.
        `caller_node`: the client runs in a container on that node, and dials the router on
        the node's bridge address (agent/trust.py)."""
        return self._router_url(row.id, self.node_of(row), caller_node)

    def started_router_url(self, sandbox_id: str, caller_node: str | None = None) -> str:
        """router_url of a sandbox this replica has just started (no database read)."""
        running = self.running.get(sandbox_id)
        if running is None:  # a retried create, of one that finished meanwhile, say
            row = self._by_id(sandbox_id)
            if row is None:
                raise errors.not_found(f"sandbox {sandbox_id} not found")
            return self._router_url(sandbox_id, self.node_it_ran_on(row), caller_node)
        return self._router_url(sandbox_id, running.node, caller_node)

    @staticmethod
    def _router_url(sandbox_id: str, node: Node | None, caller_node: str | None) -> str:
        if node is None:
            raise errors.failed_precondition(f"sandbox {sandbox_id} has finished")
        if not node.router_url:
            raise errors.failed_precondition(
                f"node {node.node_id}, where sandbox {sandbox_id} runs, has no command router: "
                "its start failed (the server log says why)"
            )
        if caller_node is None:
            return node.router_url
        if caller_node != node.node_id:
            raise errors.failed_precondition(
                f"sandbox {sandbox_id} runs on node {node.node_id}, and a container reaches only the "
                f"sandboxes of its own node ({caller_node}) for now: create it from this container "
                "(it is placed beside it), or use it from outside the cluster"
            )
        if not node.container_router_url:
            raise errors.failed_precondition(
                f"the containers of node {node.node_id} cannot reach its sandboxes: it has no container network"
            )
        return node.container_router_url

    async def tunnels(self, sandbox_id: str) -> list[api_pb2.TunnelData]:
        """A running sandbox's open ports as the client sees them (Tunnel.url, tcp_socket);
        none once it has finished."""
        running = self.running.get(sandbox_id)
        node: Node | None = None
        if running is not None:
            node, task_id = running.node, running.task_id
        elif (row := self._by_id(sandbox_id)) is not None:  # started by another replica
            node, task_id = self.node_of(row), row.task_id
        if node is None:
            return []
        return [
            api_pb2.TunnelData(
                container_port=tunnel.container_port,
                host=tunnel.host,
                port=tunnel.port,
                unencrypted_host=tunnel.unencrypted_host or None,
                unencrypted_port=tunnel.unencrypted_port or None,
            )
            for tunnel in await node.tunnels(task_id)
        ]

    async def snapshot_filesystem(self, task_id: str, snapshot_id: str) -> str:
        """A new image: the running sandbox's image plus what it changed (image_snapshots.py)."""
        row = self.by_task(task_id)
        node = self.node_of(row) if row is not None else None
        if row is None or node is None:
            raise errors.failed_precondition(
                f"sandbox task {task_id} has finished; only a running one can be snapshotted"
            )
        running = self.running.get(row.id)
        if running is not None:
            chain, config = running.chain, running.config
        else:  # started by another replica
            chain, config = self.images.runtime_chain(row.image_id)
        return await self.snapshots.take(row.workspace_id, node, task_id, chain, config, snapshot_id)

    def terminate(self, sandbox_id: str) -> None:
        """Stop it now (its result: TERMINATED, return code 137); a no-op once finished.
        Another replica's sandbox is ended here and killed on its node; the replica that
        started it sees it exit (and commits its volumes) as usual."""
        if sandbox_id in self.running:
            self._end(sandbox_id, GENERIC.GENERIC_STATUS_TERMINATED)
            return
        row = self._by_id(sandbox_id)
        node = self.node_of(row) if row is not None else None
        if row is not None and node is not None:
            status = GENERIC.GENERIC_STATUS_TERMINATED
            self._finish(sandbox_id, GENERIC(status=status, exception=_why(status)))
            node.kill(row.task_id)

    async def exec_environment(self, task_id: str, sources: list[api_pb2.SecretSource]) -> dict[str, str]:
        """An exec's secrets and env= (for the router), read in its sandbox's workspace:
        only looked up when a named Secret needs it (most execs carry env= at most)."""
        if not any(source.secret_id for source in sources):
            return await self.secret_environment("", sources)
        with self.engine.connect() as connection:
            workspace_id = connection.execute(
                sa.select(s.c.workspace_id).where(s.c.task_id == task_id, s.c.result.is_(None))
            ).scalar()
        if workspace_id is None:  # a credential outlives its sandbox: it reads no secrets then
            raise errors.not_found(f"sandbox task {task_id} is not running")
        return await self.secret_environment(workspace_id, sources)

    def stop_all(self) -> None:
        for sandbox_id in list(self.running):
            self.terminate(sandbox_id)


def _why(status: int) -> str:
    if status == GENERIC.GENERIC_STATUS_TIMEOUT:
        return "the sandbox ran past its timeout"
    return "the sandbox was terminated"

"""The task command router on a cluster node, beside the sandboxes it serves.

In cluster mode every node agent (agent/ray_agent.py) runs its own router on the node's
address, so a sandbox's stdio and execs go from the client straight to the machine that
runs it. What the router cannot answer from the node alone it asks a control-plane replica
over HTTP (server/router_callbacks.py), with the client's own credential for that task:
the values of named Secrets for an exec, and recording the image a filesystem snapshot
makes. Everything else (credentials, processes, activity for idle_timeout) is local.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp
from grpclib import GRPCError, Status
from grpclib.server import Server
from modal_proto import api_pb2

from homeport.agent.router import CommandRouter, RouterCredentials, caller_credential, listen
from homeport.agent.sandbox_io import SandboxActivity

log = logging.getLogger("homeport.agent")

CALLBACK_TIMEOUT_S = 600.0  # a snapshot of a large writable layer takes a while


def tls_context(
    directory: Path, certificate_pem: bytes, key_pem: bytes, alpn: tuple[str, ...]
) -> ssl.SSLContext:
    """A server context from a certificate the control plane's CA issued for this node."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / "node-certificate.pem", directory / "node-key.pem"
    certificate.write_bytes(certificate_pem)
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


class NodeRouter:
    """One router per node; replicas introduce themselves (their callback address) as
    they say hello, and each sandbox's callbacks go to the replica that started it."""

    def __init__(
        self,
        credentials: RouterCredentials,
        sandboxes: Any,  # NodeAgent: .sandbox(task_id)
        activity: SandboxActivity,
        owner_of: Any,  # task id -> the replica that started it, or None
    ) -> None:
        self.credentials = credentials
        self.activity = activity
        self._owner_of = owner_of
        self.replicas: dict[str, str] = {}  # replica id -> its HTTP base URL
        self.url = ""
        self.container_url = ""
        self._router = CommandRouter(
            credentials, sandboxes.sandbox, self._secrets, activity.touch, self._snapshot
        )
        self._servers: list[Server] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None) -> str:
        server, self.url = await listen(self._router, host, port, tls)
        self._servers.append(server)
        log.info("sandbox command router at %s", self.url)
        return self.url

    async def start_for_containers(self, gateway: str, tls: ssl.SSLContext) -> int:
        """The same router on the node's bridge address, for the client inside its
        containers (always TLS: agent/trust.py); returns its port."""
        server, self.container_url = await listen(self._router, gateway, 0, tls)
        self._servers.append(server)
        return int(self.container_url.rsplit(":", 1)[1])

    def _replica(self, task_id: str) -> str:
        """The HTTP base of the replica that started the sandbox, else any replica (they
        all read the same database)."""
        owner = self._owner_of(task_id)
        base = self.replicas.get(owner) if owner else None
        if base is None and self.replicas:
            base = next(reversed(self.replicas.values()))
        if base is None:
            raise GRPCError(Status.UNAVAILABLE, "no control-plane replica has reached this node yet; retry")
        return base

    async def _post(self, task_id: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_S))
        url = f"{self._replica(task_id)}{path}"
        try:
            async with self._session.post(
                url, json=body, headers={"authorization": f"Bearer {caller_credential()}"}
            ) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise GRPCError(
                Status.UNAVAILABLE, f"the control plane did not answer ({error!r}); retry"
            ) from None
        if response.status != 200:
            status = {
                400: Status.INVALID_ARGUMENT,
                401: Status.UNAUTHENTICATED,
                404: Status.NOT_FOUND,
                409: Status.FAILED_PRECONDITION,
            }
            raise GRPCError(status.get(response.status, Status.INTERNAL), str(answer.get("error", answer)))
        return answer  # type: ignore[no-any-return]

    async def _secrets(self, task_id: str, sources: list[api_pb2.SecretSource]) -> dict[str, str]:
        """An exec's environment: inline env= here; named Secrets from the control plane."""
        if not any(source.secret_id for source in sources):
            environment: dict[str, str] = {}
            for source in sources:
                environment.update(source.env.contents)
            return environment
        listed = [
            {"secret_id": source.secret_id} if source.secret_id else {"env": dict(source.env.contents)}
            for source in sources
        ]
        answer = await self._post(task_id, "/_homeport/router/environment", {"sources": listed})
        return {str(key): str(value) for key, value in answer["environment"].items()}

    async def _snapshot(self, task_id: str, snapshot_id: str) -> str:
        answer = await self._post(task_id, "/_homeport/router/snapshot", {"snapshot_id": snapshot_id})
        return str(answer["image_id"])

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        if self._session is not None:
            await self._session.close()
        await asyncio.sleep(0)

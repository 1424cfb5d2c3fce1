"""A sandbox's open ports, reached from outside (`encrypted_ports=`, `unencrypted_ports=`).

For each port the node listens on its public host: an encrypted port gets a TLS listener
(a certificate from Homeport's CA, see homeport/tls.py), an unencrypted one a TLS listener
and a plain TCP one (client 1.6.4's `Tunnel.url` is always `https://`, `tcp_socket` is the
raw one). Each connection is forwarded, byte for byte, to the port on the sandbox's own
address on the node's bridge. The listeners close when the sandbox ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import ssl
from collections.abc import Callable

from homeport.agent.forward import pipe

log = logging.getLogger("homeport.sandbox")


@dataclasses.dataclass(frozen=True)
class Tunnel:
    container_port: int
    host: str
    port: int  # TLS
    unencrypted_host: str = ""
    unencrypted_port: int = 0


class TunnelGate:
    """Where this node's sandboxes' ports are published: `host` (the address clients use)
    and the TLS context its certificates come from."""

    def __init__(self, host: str, tls: Callable[[], ssl.SSLContext]) -> None:
        self.host = host
        self.tls = tls

    async def open(
        self, target_host: str, ports: tuple[tuple[int, bool], ...], inbound_cidrs: tuple[str, ...] = ()
    ) -> OpenTunnels:
        """Listeners for `ports` ((container port, unencrypted) pairs) forwarding to
        `target_host`, the sandbox's address; only from `inbound_cidrs` when given."""
        opened = OpenTunnels(tuple(ipaddress.ip_network(cidr, strict=False) for cidr in inbound_cidrs))
        try:
            for container_port, unencrypted in ports:
                secure = await opened.listen(self.host, target_host, container_port, self.tls())
                plain = (
                    await opened.listen(self.host, target_host, container_port, None) if unencrypted else 0
                )
                opened.tunnels.append(
                    Tunnel(container_port, self.host, secure, self.host if plain else "", plain)
                )
        except BaseException:
            await opened.close()
            raise
        return opened


class OpenTunnels:
    def __init__(self, allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()) -> None:
        self.allowed = allowed  # empty: anyone may connect
        self.tunnels: list[Tunnel] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, target_host: str, target_port: int, tls: ssl.SSLContext | None) -> int:
        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)  # cancelled when the sandbox ends
            try:
                if not self._admits(writer.get_extra_info("peername")):
                    writer.close()
                    return
                try:
                    upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
                except OSError as error:
                    log.info("tunnel to %s:%d: nothing answers there (%s)", target_host, target_port, error)
                    writer.close()
                    return
                await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
            finally:
                self._connections.discard(task)

        server = await asyncio.start_server(forward, host, 0, ssl=tls)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def _admits(self, peer: tuple[str, int] | None) -> bool:
        if not self.allowed:
            return True
        if peer is None:
            return False
        address = ipaddress.ip_address(peer[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

"""Byte forwarding from a node to the control plane.

Containers on a cluster node reach the control plane exactly as on one machine: gRPC on
a Unix socket bound into the container (so `block_network=True` containers reach it too),
and blob URLs on the node's bridge address. The node agent listens at both and forwards
each connection, byte for byte, to the control plane's address. Authentication stays
end to end: the container's own credential travels inside the forwarded stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

log = logging.getLogger("homeport.agent")
CHUNK = 256 * 1024


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class _Forwarder:
    def __init__(self, target: str) -> None:
        self.target = target
        self._server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = split_address(self.target)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError as error:
            log.warning("cannot reach the control plane at %s: %s", self.target, error)
            writer.close()
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)


class SocketForwarder(_Forwarder):
    """A Unix socket at `path` forwarded to a TCP address."""

    def __init__(self, path: Path, target: str) -> None:
        super().__init__(target)
        self.path = path

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        self.path.chmod(0o666)  # containers run as root in their own user namespace


class PortForwarder(_Forwarder):
    """A TCP listener (host, port) forwarded to a TCP address."""

    def __init__(self, host: str, port: int, target: str) -> None:
        super().__init__(target)
        self.host = host
        self.port = port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

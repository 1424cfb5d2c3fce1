"""The gRPC listener's limits: how many connections it keeps, for how long idle, and how
large a request body it reads.

grpclib (pinned in pyproject) has no settings for these, so the listener wraps each
connection's protocol and reads request bodies itself: the 5-byte gRPC frame header
first, so an oversized body is refused before it is buffered (HTTP/2 flow control holds
the sender to the stream window meanwhile).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
import time
from typing import Any

from google.protobuf.message import DecodeError, Message
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server
from grpclib.server import Stream as ServerStream

log = logging.getLogger("homeport.rpc")


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024
    # A connection with no request in flight is closed after this long; clients reconnect
    # on their next call (client 1.6.4 keeps long-polls open while it has work, so only
    # truly idle channels are closed).
    idle_timeout_s: float = 300.0
    # A connection must have sent its first request by then (slow or silent peers).
    first_request_timeout_s: float = 10.0
    sweep_interval_s: float = 1.0


# The containers' Unix socket: one connection per container, and a node may hold thousands.
# A zygote's spare opens its connection before it is a container (agent/zygote_main.py)
# and sends its first request only when a cold start takes it: as long as an idle one.
CONTAINER_SOCKET_LIMITS = ConnectionLimits(max_connections=16384, first_request_timeout_s=300.0)


# Requests inline objects up to 2 MiB (client 1.6.4's MAX_OBJECT_SIZE_BYTES; larger ones
# travel as blobs). Batches of inputs and outputs carry up to 49 of them at once.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_BATCH_REQUEST_BYTES = 128 * 1024 * 1024
BATCH_RPCS = frozenset(
    {
        "FunctionMap",
        "FunctionPutInputs",
        "FunctionPutOutputs",
        "FunctionCallPutDataOut",
        "DictUpdate",
        "QueuePut",
    }
)


# A request's body must have arrived this long after its headers (the largest allowed
# body, 128 MiB, takes a few seconds on a slow link).
BODY_TIMEOUT_S = 60.0


def max_request_bytes(rpc_name: str) -> int:
    return MAX_BATCH_REQUEST_BYTES if rpc_name in BATCH_RPCS else MAX_REQUEST_BYTES


async def read_request(stream: ServerStream, rpc_name: str) -> Message:
    """The request body, decoded; RESOURCE_EXHAUSTED past the size limit, INVALID_ARGUMENT
    for a body that is not the RPC's message, ends early, or has not arrived in time (a
    stream opened and left silent holds its connection open otherwise)."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await _read_request(stream, rpc_name)
    except TimeoutError:
        raise GRPCError(
            Status.INVALID_ARGUMENT,
            f"{rpc_name}: the request body did not arrive within {BODY_TIMEOUT_S:.0f} s",
        ) from None
    except AssertionError:  # grpclib's buffer, when the stream ends inside a message
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"{rpc_name}: the request ended inside its message"
        ) from None


async def _read_request(stream: ServerStream, rpc_name: str) -> Message:
    transport_stream: Any = stream._stream  # grpclib 0.4.9: the HTTP/2 stream under the gRPC one
    header = await transport_stream.recv_data(5)
    if len(header) < 5:
        raise GRPCError(Status.INVALID_ARGUMENT, f"{rpc_name}: the request has no complete message")
    compressed, length = struct.unpack(">?I", header)
    if compressed:
        raise GRPCError(Status.INVALID_ARGUMENT, f"{rpc_name}: compressed requests are not supported")
    limit = max_request_bytes(rpc_name)
    if length > limit:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"{rpc_name}: the request is {length} bytes, over this server's limit of {limit}; "
            "send large values as blobs (the modal client does this itself for values over 2 MiB)",
        )
    body = await transport_stream.recv_data(length)
    if len(body) < length:
        raise GRPCError(Status.INVALID_ARGUMENT, f"{rpc_name}: the request ended inside its message")
    request: Message = stream._recv_type()  # type: ignore[attr-defined]
    try:
        request.ParseFromString(body)
    except DecodeError:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"{rpc_name}: the request body is not a valid {type(request).__name__}"
        ) from None
    return request


class _CoalescedWrites:
    """The connection's transport as grpclib sees it: what grpclib writes during one turn
    of the event loop (an answer's headers, message and trailers are three writes, and
    several answers may be ready at once) goes to the socket as one send at the end of
    that turn. Each send costs a system call here and a wake-up on the other side."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _GuardedProtocol(asyncio.Protocol):
    """One connection: grpclib's protocol inside, with its activity watched."""

    def __init__(self, inner: H2Protocol, guard: _Guard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.BaseTransport | None = None
        self.opened_at = self.last_active = time.monotonic()
        self.served_a_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self.guard.admit(self):
            self.inner.handler.close()  # never used: let the server forget it
            transport.close()
            return
        self.inner.connection_made(_CoalescedWrites(transport))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self.inner.data_received(data)
        if not self.served_a_request and self.streams_open():
            self.served_a_request = True

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.guard.release(self):
            self.inner.connection_lost(exc)

    def streams_open(self) -> int:
        processor = getattr(self.inner, "processor", None)
        return len(processor.streams) if processor is not None else 0


class _Guard:
    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open: set[_GuardedProtocol] = set()
        self.refused = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def admit(self, connection: _GuardedProtocol) -> bool:
        if len(self.open) >= self.limits.max_connections:
            self.refused += 1
            if self.refused % 100 == 1:
                log.warning(
                    "refusing connections: %d open, the limit (%d refused so far)",
                    len(self.open),
                    self.refused,
                )
            return False
        self.open.add(connection)
        if self._sweeper is None:
            self._schedule()
        return True

    def release(self, connection: _GuardedProtocol) -> bool:
        """Whether the connection had been admitted."""
        if connection in self.open:
            self.open.discard(connection)
            return True
        return False

    def _schedule(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(self.limits.sweep_interval_s, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for connection in list(self.open):
            if connection.streams_open():
                connection.last_active = now
                continue
            quiet = now - connection.last_active
            silent = (
                not connection.served_a_request
                and now - connection.opened_at > self.limits.first_request_timeout_s
            )
            if (silent or quiet > self.limits.idle_timeout_s) and connection.transport is not None:
                connection.transport.close()
        if self.open:
            self._schedule()
        else:
            self._sweeper = None

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class GuardedServer(Server):
    """grpclib's Server with bounded, expiring connections."""

    def __init__(self, handlers: list[Any], limits: ConnectionLimits | None = None) -> None:
        super().__init__(handlers)
        self.guard = _Guard(limits or ConnectionLimits())

    def _protocol_factory(self) -> Any:
        return _GuardedProtocol(super()._protocol_factory(), self.guard)

    def close(self) -> None:
        self.guard.stop()
        super().close()

"""Bad requests are cheap: every RPC with random, truncated, oversized and random-but-valid
bodies, with and without credentials. The server answers each with a status that names
the problem (never INTERNAL), logs no traceback, keeps its memory bounded, and serves a
normal `modal run` afterwards. Bounded in count (a fixed seed) and time."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpclib import GRPCError, Status
from grpclib.client import Channel
from grpclib.encoding.proto import ProtoCodec
from modal_proto import api_grpc

from homeport import SUPPORTED_CLIENT_VERSION
from tests.conftest import Server, assert_ok, run_modal
from tests.e2e.test_auth import user_metadata

SEED = 20261129
CALL_TIMEOUT_S = 4.0
# Long-polls may legitimately wait out the call's deadline; everything else must answer.
ACCEPTED_FAILURES = {
    Status.INVALID_ARGUMENT,
    Status.NOT_FOUND,
    Status.UNAUTHENTICATED,
    Status.PERMISSION_DENIED,
    Status.FAILED_PRECONDITION,
    Status.RESOURCE_EXHAUSTED,
    Status.ALREADY_EXISTS,
    Status.UNIMPLEMENTED,
    Status.OUT_OF_RANGE,
    Status.DEADLINE_EXCEEDED,
    Status.CANCELLED,
}


class RawCodec(ProtoCodec):
    """Sends bytes as they are, so a request body can be anything."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        return (
            bytes(message)
            if isinstance(message, (bytes, bytearray))
            else super().encode(message, message_type)
        )


def _routes() -> dict[str, Any]:
    class Names:
        def __getattr__(self, name: str) -> str:
            return name

    return {route.func: route for route in api_grpc.ModalClientBase.__mapping__(Names()).values()}  # type: ignore[arg-type]


def random_message(descriptor: Descriptor, rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """Field values for a message of this type: random strings, numbers, enums and nested
    messages, a few elements for repeated fields."""
    values: dict[str, Any] = {}
    for field in descriptor.fields:
        if rng.random() < 0.4:
            continue
        count = rng.randint(0, 3) if field.is_repeated else 1
        made = [_random_value(field, rng, depth) for _ in range(count)]
        made = [value for value in made if value is not None]
        if made:
            values[field.name] = made if field.is_repeated else made[0]
    return values


def _random_value(field: FieldDescriptor, rng: random.Random, depth: int) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.GetOptions().map_entry or depth >= 3:
            return None
        return random_message(field.message_type, rng, depth + 1)
    if field.type == FieldDescriptor.TYPE_STRING:
        return rng.choice(
            ["", "x", "fu-" + "A" * 22, "../../etc/passwd", "\u00e9" * rng.randint(1, 50), "a" * 5000]
        )
    if field.type == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.randint(0, 64))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if field.type == FieldDescriptor.TYPE_ENUM:
        return rng.choice([value.number for value in field.enum_type.values])
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice([0.0, -1.0, 1e30, float("nan"), 3.5])
    unsigned = field.type in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
    )
    return rng.choice([0, 1, 7, 2**31 - 1] + ([] if unsigned else [-1, -(2**31)]))


def _build(message_type: type[Message], values: dict[str, Any]) -> Message:
    message = message_type()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            child_type = type(getattr(message, name).add() if field.is_repeated else getattr(message, name))
            if field.is_repeated:
                getattr(message, name).pop()
                for item in value:
                    getattr(message, name).add().CopyFrom(_build(child_type, item))
            else:
                getattr(message, name).CopyFrom(_build(child_type, value))
        elif field.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def fuzz_cases(rng: random.Random) -> list[tuple[str, bytes, bool]]:
    """(rpc, body, with credentials) for every RPC of the client's service."""
    cases: list[tuple[str, bytes, bool]] = []
    for rpc, route in sorted(_routes().items()):
        valid = _build(
            route.request_type, random_message(route.request_type.DESCRIPTOR, rng)
        ).SerializeToString()
        cases.append((rpc, valid, True))
        cases.append(
            (
                rpc,
                _build(
                    route.request_type, random_message(route.request_type.DESCRIPTOR, rng)
                ).SerializeToString(),
                True,
            )
        )
        cases.append((rpc, rng.randbytes(rng.randint(1, 200)), True))
        cases.append((rpc, valid[: max(0, len(valid) // 2)] + b"\xff\xff", True))
        cases.append((rpc, valid, False))
    return cases


async def _send(
    server: Server, cases: list[tuple[str, bytes, bool]], metadata: dict[str, str]
) -> list[tuple[str, Any]]:
    routes = _routes()
    anonymous = {"x-modal-client-version": SUPPORTED_CLIENT_VERSION, "x-modal-client-type": "1"}
    outcomes: list[tuple[str, Any]] = []
    semaphore = asyncio.Semaphore(16)

    async def one(rpc: str, body: bytes, authenticated: bool) -> None:
        route = routes[rpc]
        async with semaphore:
            channel = Channel("127.0.0.1", server.port, codec=RawCodec())
            try:
                stream = channel.request(
                    f"/modal.client.ModalClient/{rpc}",
                    route.cardinality,
                    route.request_type,
                    route.reply_type,
                    timeout=CALL_TIMEOUT_S,
                    metadata=metadata if authenticated else anonymous,
                )
                async with stream as call:
                    await call.send_message(body, end=True)  # type: ignore[arg-type]
                    while await call.recv_message() is not None:
                        pass
                outcomes.append((rpc, Status.OK))
            except GRPCError as error:
                outcomes.append((rpc, error.status))
            except TimeoutError:
                outcomes.append((rpc, Status.DEADLINE_EXCEEDED))
            finally:
                channel.close()

    await asyncio.gather(*(one(*case) for case in cases))
    return outcomes


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def fuzz_server(own_server: Server) -> Server:
    return own_server


def test_random_truncated_and_unauthenticated_bodies_never_fail_internally(fuzz_server: Server) -> None:
    server = fuzz_server
    assert server.process is not None
    before = _rss_mib(server.process.pid)
    outcomes = asyncio.run(_send(server, fuzz_cases(random.Random(SEED)), user_metadata(server)))
    bad = sorted(
        {f"{rpc}: {status.name}" for rpc, status in outcomes if status not in ACCEPTED_FAILURES | {Status.OK}}
    )
    assert not bad, f"answered with an internal failure: {bad}"
    log = server.log_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert _rss_mib(server.process.pid) < before + 200
    assert "hello" in assert_ok(run_modal(server, "run", "hello.py"))


def test_an_oversized_body_is_refused_before_it_is_read(fuzz_server: Server) -> None:
    server = fuzz_server
    assert server.process is not None
    before = _rss_mib(server.process.pid)
    body = b"\x0a" + b"\xff" * 5 + b"x" * (40 * 1024 * 1024)  # 40 MiB, over the 16 MiB limit
    for authenticated in (True, False):
        outcomes = asyncio.run(_send(server, [("AppCreate", body, authenticated)], user_metadata(server)))
        expected = Status.RESOURCE_EXHAUSTED if authenticated else Status.UNAUTHENTICATED
        assert outcomes == [("AppCreate", expected)]
    assert _rss_mib(server.process.pid) < before + 100


@pytest.mark.parametrize("blob_id", ["", "/../../../../etc/passwd", "bl-../../../etc/hostname"])
def test_a_blob_id_that_is_a_path_opens_no_file(server: Server, blob_id: str) -> None:
    from modal_proto import api_pb2

    from tests.e2e.test_auth import call_raw

    for rpc, request in (
        ("BlobGet", api_pb2.BlobGetRequest(blob_id=blob_id)),
        ("MountPutFile", api_pb2.MountPutFileRequest(sha256_hex="0" * 64, data_blob_id=blob_id)),
    ):
        with pytest.raises(GRPCError) as raised:
            call_raw(server, rpc, request, user_metadata(server))
        assert raised.value.status in (Status.NOT_FOUND, Status.INVALID_ARGUMENT), (rpc, raised.value)


def test_silent_connections_are_closed(server: Server) -> None:
    """Connections that never send a request do not pile up (slow or idle peers)."""
    import socket
    import time

    from homeport.server.connections import ConnectionLimits

    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    deadline = time.monotonic() + ConnectionLimits().first_request_timeout_s + 10
    closed = 0
    for connection in sockets:
        connection.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while connection.recv(65536):  # the server's HTTP/2 settings, then end of stream
                pass
            closed += 1
        except TimeoutError:
            pass
        finally:
            connection.close()
    assert closed == len(sockets)

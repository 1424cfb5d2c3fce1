"""The RPC layer keeps the server up when a handler fails, and says which request failed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from grpclib import GRPCError, Status
from grpclib.testing import ChannelFor
from modal_proto import api_grpc, api_pb2

from homeport import SUPPORTED_CLIENT_VERSION
from homeport.config import Settings
from homeport.server.servicer import HomeportServicer
from homeport.server.state import build_state


def test_a_failing_handler_answers_internal_with_its_request_id_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    servicer, metadata = _main_workspace(tmp_path)

    async def broken(context, request):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    servicer.handlers = {**servicer.handlers, "AppList": broken}

    async def scenario() -> tuple[GRPCError, api_pb2.EnvironmentGetOrCreateResponse]:
        async with ChannelFor([servicer]) as channel:
            stub = api_grpc.ModalClientStub(channel)
            with pytest.raises(GRPCError) as raised:
                await stub.AppList(api_pb2.AppListRequest(), metadata=metadata)
            after = await stub.EnvironmentGetOrCreate(
                api_pb2.EnvironmentGetOrCreateRequest(), metadata=metadata
            )
            return raised.value, after

    error, after = asyncio.run(scenario())
    assert error.status == Status.INTERNAL
    assert "internal error in AppList (request rq-" in str(error.message)
    assert after.metadata.name == "main"


def _main_workspace(tmp_path: Path) -> tuple[HomeportServicer, dict[str, str]]:
    state = build_state(Settings(data_dir=tmp_path))
    token_id, secret = state.auth.create_token("main")
    metadata = {
        "x-modal-client-version": SUPPORTED_CLIENT_VERSION,
        "x-modal-token-id": token_id,
        "x-modal-token-secret": secret,
    }
    return HomeportServicer(state), metadata


def _unreachable() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_a_request_waits_out_a_database_restart_instead_of_failing(tmp_path: Path) -> None:
    """Client 1.6.4 gives up on UNAVAILABLE after about 0.7 s; a PostgreSQL restart takes
    longer, so the server waits for the database and runs the handler again."""
    servicer, metadata = _main_workspace(tmp_path)
    attempts = []

    async def flaky(context, request):  # type: ignore[no-untyped-def]
        attempts.append(request.environment_name)
        if len(attempts) < 4:
            raise _unreachable()
        return api_pb2.AppListResponse(apps=[api_pb2.AppListResponse.AppListItem(name="came-back")])

    servicer.handlers = {**servicer.handlers, "AppList": flaky}

    async def scenario() -> api_pb2.AppListResponse:
        async with ChannelFor([servicer]) as channel:
            stub = api_grpc.ModalClientStub(channel)
            return await stub.AppList(api_pb2.AppListRequest(environment_name="main"), metadata=metadata)

    response = asyncio.run(scenario())
    assert [app.name for app in response.apps] == ["came-back"]
    assert attempts == ["main"] * 4


def test_a_streamed_answer_already_begun_is_not_run_again(tmp_path: Path) -> None:
    servicer, metadata = _main_workspace(tmp_path)
    attempts = []

    async def half_sent(context, request, send):  # type: ignore[no-untyped-def]
        attempts.append(1)
        await send(api_pb2.TaskLogsBatch(entry_id="1"))
        raise _unreachable()

    servicer.handlers = {**servicer.handlers, "AppGetLogs": half_sent}

    async def scenario() -> tuple[list[api_pb2.TaskLogsBatch], GRPCError]:
        received = []
        async with ChannelFor([servicer]) as channel:
            stub = api_grpc.ModalClientStub(channel)
            with pytest.raises(GRPCError) as raised:
                async with stub.AppGetLogs.open(metadata=metadata) as stream:
                    await stream.send_message(api_pb2.AppGetLogsRequest(), end=True)
                    async for batch in stream:
                        received.append(batch)
            return received, raised.value

    received, error = asyncio.run(scenario())
    assert [batch.entry_id for batch in received] == ["1"]
    assert error.status == Status.UNAVAILABLE
    assert attempts == [1]

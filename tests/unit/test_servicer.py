"""The RPC layer keeps the server up when a handler fails, and says which request failed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
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
    state = build_state(Settings(data_dir=tmp_path))
    token_id, secret = state.auth.create_token("main")
    metadata = {
        "x-modal-client-version": SUPPORTED_CLIENT_VERSION,
        "x-modal-token-id": token_id,
        "x-modal-token-secret": secret,
    }
    servicer = HomeportServicer(state)

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

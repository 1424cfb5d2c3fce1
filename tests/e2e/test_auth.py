"""Credentials, workspaces and protocol errors, seen from the client's side."""

from __future__ import annotations

import asyncio
import json

import pytest
from grpclib import GRPCError, Status
from grpclib.client import Channel
from modal_proto import api_grpc, api_pb2

from homeport import SUPPORTED_CLIENT_VERSION
from tests.conftest import Server, assert_ok, output, run_modal, run_python


def call_raw(server: Server, rpc: str, request, metadata: dict[str, str]):  # type: ignore[no-untyped-def]
    """One RPC through grpclib with exactly the metadata given (no modal client involved)."""

    async def go():  # type: ignore[no-untyped-def]
        channel = Channel("127.0.0.1", server.port)
        try:
            return await getattr(api_grpc.ModalClientStub(channel), rpc)(
                request, metadata=metadata, timeout=10
            )
        finally:
            channel.close()

    return asyncio.run(go())


def user_metadata(server: Server, **overrides: str) -> dict[str, str]:
    env = server.client_env
    metadata = {
        "x-modal-client-version": SUPPORTED_CLIENT_VERSION,
        "x-modal-client-type": "1",
        "x-modal-token-id": env["MODAL_TOKEN_ID"],
        "x-modal-token-secret": env["MODAL_TOKEN_SECRET"],
    }
    metadata.update(overrides)
    return metadata


def test_missing_or_wrong_token_is_refused(server: Server) -> None:
    result = run_modal(server, "run", "hello.py", MODAL_TOKEN_SECRET="as-wrong")
    assert result.returncode != 0
    assert "invalid or revoked" in output(result)


def test_unsupported_client_version_names_the_supported_one(server: Server) -> None:
    with pytest.raises(GRPCError) as raised:
        call_raw(
            server,
            "AppList",
            api_pb2.AppListRequest(),
            user_metadata(server, **{"x-modal-client-version": "0.60.0"}),
        )
    assert raised.value.status == Status.FAILED_PRECONDITION
    assert SUPPORTED_CLIENT_VERSION in str(raised.value.message)


def test_rpc_homeport_lacks_is_unimplemented_by_name(server: Server) -> None:
    with pytest.raises(GRPCError) as raised:
        call_raw(server, "SandboxSnapshot", api_pb2.SandboxSnapshotRequest(), user_metadata(server))
    assert raised.value.status == Status.UNIMPLEMENTED
    assert raised.value.message == "Homeport does not support SandboxSnapshot yet"


def test_oversized_request_is_invalid_argument(server: Server) -> None:
    items = [api_pb2.FunctionPutInputsItem(idx=i) for i in range(5000)]
    with pytest.raises(GRPCError) as raised:
        call_raw(
            server,
            "FunctionPutInputs",
            api_pb2.FunctionPutInputsRequest(function_id="fu-x", function_call_id="fc-x", inputs=items),
            user_metadata(server),
        )
    # Refused for its size, before the (unknown) call is even looked up.
    assert raised.value.status == Status.INVALID_ARGUMENT
    assert "too many inputs in one request" in str(raised.value.message)


def test_forged_container_credential_is_refused(server: Server) -> None:
    metadata = {
        "x-modal-client-version": SUPPORTED_CLIENT_VERSION,
        "x-modal-client-type": "3",
        "x-homeport-task-id": "ta-00000000000000000000000000",
        "x-homeport-task-secret": "guess",
    }
    with pytest.raises(GRPCError) as raised:
        call_raw(server, "FunctionGetInputs", api_pb2.FunctionGetInputsRequest(function_id="fu-x"), metadata)
    assert raised.value.status == Status.UNAUTHENTICATED


def test_containers_get_their_own_credential_not_the_users_token(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_file = tmp_path / "envcheck.py"
    app_file.write_text(
        "import os, modal\napp = modal.App('envcheck')\n"
        "@app.function()\ndef env():\n    return {k: v for k, v in os.environ.items() if 'MODAL' in k}\n"
        "@app.local_entrypoint()\ndef main():\n    import json\n    print('ENV', json.dumps(env.remote()))\n"
    )
    text = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))
    seen = json.loads(text.split("ENV ", 1)[1].splitlines()[0])
    user_secret = server.client_env["MODAL_TOKEN_SECRET"]
    assert all(user_secret not in value for value in seen.values())
    assert "MODAL_TOKEN_SECRET" not in seen
    assert "x-homeport-task-secret:" in seen["MODAL_OVERRIDE_HEADERS"]


def test_workspaces_see_only_their_own_apps(server: Server) -> None:
    created = server.homeport("workspace", "create", "team-b")
    assert created.returncode == 0 or "already exists" in created.stderr
    token = server.homeport("token", "create", "--workspace", "team-b")
    assert token.returncode == 0, token.stderr
    other = dict(line.split("=", 1) for line in token.stdout.split())
    assert_ok(run_modal(server, "deploy", "basics.py"))
    call_id = assert_ok(
        run_python(
            server, "import modal\nprint(modal.Function.from_name('basics', 'square').spawn(3).object_id)"
        )
    ).split()[-1]
    lookup = run_python(
        server, "import modal\nmodal.Function.from_name('basics', 'square').remote(2)", **other
    )
    assert lookup.returncode != 0 and "NotFoundError" in output(lookup)
    stolen = run_python(
        server, f"import modal\nmodal.FunctionCall.from_id({call_id!r}).get(timeout=5)", **other
    )
    assert stolen.returncode != 0 and "not found" in output(stolen)
    # The same name deploys independently in the other workspace.
    assert_ok(run_modal(server, "deploy", "hello.py", **other))
    listing = assert_ok(run_modal(server, "app", "list", "--json", **other))
    names = {app["description"] for app in json.loads(listing)}
    assert "hello" in names and "basics" not in names


def test_revoked_token_is_refused(server: Server) -> None:
    token = server.homeport("token", "create", "--label", "short-lived")
    credentials = dict(line.split("=", 1) for line in token.stdout.split())
    assert_ok(run_modal(server, "app", "list", **credentials))
    listed = server.homeport("token", "list")
    assert (
        credentials["MODAL_TOKEN_ID"] in listed.stdout
        and credentials["MODAL_TOKEN_SECRET"] not in listed.stdout
    )
    assert server.homeport("token", "revoke", credentials["MODAL_TOKEN_ID"]).returncode == 0
    refused = run_modal(server, "app", "list", **credentials)
    assert refused.returncode != 0 and "revoked" in output(refused)

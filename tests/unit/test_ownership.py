"""The ownership check at the RPC edge: a workspace uses its own objects and the shared
client mount, and nothing else."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from grpclib import GRPCError, Status
from modal_proto import api_pb2

from homeport import ids
from homeport.config import Settings
from homeport.server.ownership import OwnershipCheck
from homeport.server.state import open_engine
from homeport.server.store import schema


@pytest.fixture
def check(tmp_path: Path) -> OwnershipCheck:
    engine = open_engine(Settings(data_dir=tmp_path))
    with engine.begin() as connection:
        for workspace in ("ac-a", "ac-b"):
            connection.execute(
                schema.workspaces.insert().values(id=workspace, name=workspace, created_at=time.time())
            )
    return OwnershipCheck(engine)


def _add_mount(check: OwnershipCheck, workspace_id: str | None) -> str:
    mount_id = ids.new_id("mount")
    with check.engine.begin() as connection:
        connection.execute(
            schema.mounts.insert().values(
                id=mount_id, workspace_id=workspace_id, files=b"[]", created_at=time.time()
            )
        )
    return mount_id


def _add_blob(check: OwnershipCheck, workspace_id: str | None) -> str:
    blob_id = ids.new_id("blob")
    with check.engine.begin() as connection:
        connection.execute(
            schema.blobs.insert().values(id=blob_id, workspace_id=workspace_id, created_at=time.time())
        )
    return blob_id


def test_a_workspace_may_name_its_own_objects_and_the_global_client_mount(check: OwnershipCheck) -> None:
    own, shared = _add_mount(check, "ac-a"), _add_mount(check, None)
    request = api_pb2.FunctionCreateRequest(
        function=api_pb2.Function(function_name="f", mount_ids=[own, shared])
    )
    check.check("ac-a", request)
    check.check("ac-a", request)  # answered from the cache the second time


def test_another_workspaces_mount_deep_in_a_request_is_not_found(check: OwnershipCheck) -> None:
    theirs = _add_mount(check, "ac-b")
    request = api_pb2.FunctionCreateRequest()
    request.function_data.ranked_functions.add().function.mount_ids.append(theirs)
    with pytest.raises(GRPCError) as raised:
        check.check("ac-a", request)
    assert raised.value.status == Status.NOT_FOUND
    assert raised.value.message == f"mount {theirs} not found in this workspace"


def test_an_id_of_nothing_is_not_found(check: OwnershipCheck) -> None:
    with pytest.raises(GRPCError) as raised:
        check.check("ac-a", api_pb2.BlobGetRequest(blob_id=ids.new_id("blob")))
    assert raised.value.status == Status.NOT_FOUND


def test_server_internal_blobs_are_nobodys_to_download(check: OwnershipCheck) -> None:
    internal = _add_blob(check, None)
    with pytest.raises(GRPCError):
        check.check("ac-a", api_pb2.BlobGetRequest(blob_id=internal))
    check.check("ac-a", api_pb2.BlobGetRequest(blob_id=_add_blob(check, "ac-a")))


def test_values_that_are_not_our_ids_are_left_to_the_handler(check: OwnershipCheck) -> None:
    check.check("ac-a", api_pb2.FunctionGetOutputsRequest(function_call_id="fc-x", last_entry_id="12-0"))

"""Nothing grows without bound: blobs nothing needs are deleted, sizes have limits with
clear errors, a container's logs have a ceiling."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib import GRPCError, Status
from modal_proto import api_pb2

from tests.conftest import Server, assert_ok, run_python, start_server
from tests.e2e.test_auth import call_raw, user_metadata
from tests.e2e.test_calls import in_app


@pytest.fixture(scope="module")
def forgetful_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose retention passes run every second, keeping unclaimed blobs 3 s, with
    small log and disk limits per container."""
    server = start_server(
        tmp_path_factory.mktemp("forgetful"),
        server_env={
            "HOMEPORT_BLOB_GRACE_S": "3",
            "HOMEPORT_RETENTION_INTERVAL_S": "1",
            "HOMEPORT_CONTAINER_LOG_BYTES": "100000",
            "HOMEPORT_CONTAINER_DISK_MIB": "32",
        },
    )
    yield server
    server.stop()


def _blob_files(server: Server, at_least: int) -> list[Path]:
    return [p for p in (server.data_dir / "blobs").rglob("bl-*") if p.stat().st_size >= at_least]


def test_large_arguments_and_results_are_deleted_once_nothing_needs_them(forgetful_server: Server) -> None:
    size = 5 * 1024 * 1024
    script = in_app(
        f"""
        print("in", payload_size.remote(b"x" * {size}))
        print("out", len(make_payload.remote({size})))
        """
    )
    text = assert_ok(run_python(forgetful_server, script, timeout=300))
    assert f"in {size}" in text and f"out {size}" in text
    deadline = time.monotonic() + 30
    while _blob_files(forgetful_server, size) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _blob_files(forgetful_server, size) == []
    assert "blob(s) nothing needs any more" in forgetful_server.log_text()


def test_a_blob_too_large_to_store_is_refused_with_the_limit(server: Server) -> None:
    with pytest.raises(GRPCError) as raised:
        call_raw(
            server, "BlobCreate", api_pb2.BlobCreateRequest(content_length=10 * 2**40), user_metadata(server)
        )
    assert raised.value.status == Status.RESOURCE_EXHAUSTED
    assert "over this server's limit" in str(raised.value.message)


def test_a_containers_logs_stop_at_its_ceiling_and_say_so(forgetful_server: Server) -> None:
    script = "import modal\nfrom basics import *\nwith modal.enable_output(), app.run():\n    print('ran', shout.remote(5000))\n"
    text = assert_ok(run_python(forgetful_server, script, timeout=300))
    assert "ran 5000" in text
    assert "the rest is not kept (HOMEPORT_CONTAINER_LOG_BYTES)" in text
    assert text.count("shouting line") < 5000


def test_a_container_that_outgrows_its_disk_limit_is_stopped_and_its_input_fails_saying_so(
    forgetful_server: Server,
) -> None:
    script = in_app(
        """
        try:
            print(fill_disk.remote(200))
        except Exception as error:
            print("error:", type(error).__name__, error)
        print("after", square.remote(7))
        """
    )
    text = assert_ok(run_python(forgetful_server, script, timeout=300))
    assert "wrote it all" not in text
    assert "the container wrote more than its disk limit of 32 MiB" in text
    assert "after 49" in text  # the function goes on in a fresh container

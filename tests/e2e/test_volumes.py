"""Volumes: the modal CLI, the SDK, containers sharing one through commit and reload."""

from __future__ import annotations

import filecmp
import os
import time

from tests.conftest import Server, assert_ok, output, run_modal, run_python


def test_volume_cli_round_trip(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "a.txt").write_text("alpha")
    (tmp_path / "up" / "sub" / "b.txt").write_text("beta")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024) + bytes(3 * 1024 * 1024))  # trailing zeros cross a block
    assert "Created Volume 'cli-vol'" in assert_ok(run_modal(server, "volume", "create", "cli-vol"))
    assert_ok(run_modal(server, "volume", "put", "cli-vol", str(tmp_path / "up"), "/dir"))
    assert_ok(run_modal(server, "volume", "put", "cli-vol", str(big), "/big.bin"))
    again = run_modal(server, "volume", "put", "cli-vol", str(big), "/big.bin")
    assert again.returncode != 0 and "already exists" in output(again)
    assert assert_ok(run_modal(server, "volume", "ls", "cli-vol")).split() == ["big.bin", "dir"]
    assert assert_ok(run_modal(server, "volume", "ls", "cli-vol", "dir")).split() == ["dir/a.txt", "dir/sub"]
    down = tmp_path / "down"
    down.mkdir()
    assert_ok(run_modal(server, "volume", "get", "cli-vol", "/big.bin", str(down)))
    assert filecmp.cmp(big, down / "big.bin", shallow=False)
    assert_ok(run_modal(server, "volume", "get", "cli-vol", "/dir", str(down)))
    assert (down / "dir" / "sub" / "b.txt").read_text() == "beta"
    assert_ok(run_modal(server, "volume", "cp", "cli-vol", "/dir/a.txt", "/copy.txt"))
    not_empty = run_modal(server, "volume", "rm", "cli-vol", "/dir")
    assert not_empty.returncode != 0 and "not empty" in output(not_empty)
    assert_ok(run_modal(server, "volume", "rm", "-r", "cli-vol", "/dir"))
    assert assert_ok(run_modal(server, "volume", "ls", "cli-vol")).split() == ["big.bin", "copy.txt"]
    assert "cli-vol" in assert_ok(run_modal(server, "volume", "list"))
    assert_ok(run_modal(server, "volume", "delete", "cli-vol", "--yes"))
    gone = run_modal(server, "volume", "ls", "cli-vol")
    assert gone.returncode != 0 and "Volume 'cli-vol' not found" in output(gone)


def test_sdk_file_operations_and_ephemeral_volume(server: Server) -> None:
    script = """
import io, modal
vol = modal.Volume.from_name("sdk-vol", create_if_missing=True)
with vol.batch_upload() as batch:
    batch.put_file(io.BytesIO(b"first"), "/one.txt")
    batch.put_file(io.BytesIO(b"second"), "/nested/two.txt")
print("read", b"".join(vol.read_file("nested/two.txt")))
print("listdir", sorted(e.path for e in vol.listdir("/")))
print("recursive", sorted(e.path for e in vol.listdir("/", recursive=True)))
vol.copy_files(["one.txt"], "nested")
vol.remove_file("one.txt")
print("after", sorted(e.path for e in vol.iterdir("/", recursive=True)))
try:
    b"".join(vol.read_file("missing.txt"))
except FileNotFoundError:
    print("missing ok")
with modal.Volume.ephemeral() as eph:
    with eph.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"temp"), "/t.txt")
    print("ephemeral", b"".join(eph.read_file("t.txt")))
"""
    text = assert_ok(run_python(server, script))
    assert "read b'second'" in text
    assert "listdir ['nested', 'one.txt']" in text
    assert "recursive ['nested', 'nested/two.txt', 'one.txt']" in text
    assert "after ['nested', 'nested/one.txt', 'nested/two.txt']" in text
    assert "missing ok" in text and "ephemeral b'temp'" in text


def test_containers_see_commits_after_reload(server: Server) -> None:
    script = """
from volumes_app import app, write, read
with app.run():
    print("before", read.remote("x.txt", False))
    write.remote("x.txt", "one")
    print("without reload", read.remote("x.txt", False))
    print("after reload", read.remote("x.txt", True))
"""
    text = assert_ok(run_python(server, script))
    assert "before None" in text
    assert "without reload None" in text  # the reader's container still has its old view
    assert "after reload one" in text


def test_changes_are_committed_when_the_container_exits(server: Server) -> None:
    assert_ok(
        run_python(
            server,
            "from volumes_app import app, write\nwith app.run():\n    write.remote('late.txt', 'kept', commit=False)",
        )
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listing = run_modal(server, "volume", "ls", "shared-volume")
        if "late.txt" in listing.stdout:
            break
        time.sleep(0.5)
    text = assert_ok(
        run_python(
            server,
            "import modal\nprint(b''.join(modal.Volume.from_name('shared-volume').read_file('late.txt')))",
        )
    )
    assert "b'kept'" in text


def test_concurrent_commits_never_tear_a_file(server: Server) -> None:
    size = 4 * 1024 * 1024
    script = f"""
import modal
from volumes_app import app, overwrite
with app.run():
    print("wrote", sorted(overwrite.map([("contested.bin", byte, {size}) for byte in range(8)])))
data = b"".join(modal.Volume.from_name("shared-volume").read_file("contested.bin"))
print("length", len(data), "distinct bytes", len(set(data)))
"""
    text = assert_ok(run_python(server, script, timeout=300))
    assert f"length {size} distinct bytes 1" in text  # one whole version won; no mix of two


def test_writing_to_a_deleted_volume_is_a_clear_error(server: Server) -> None:
    script = """
import io, modal
vol = modal.Volume.from_name("doomed", create_if_missing=True)
vol.hydrate()
modal.Volume.objects.delete("doomed")
try:
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"x"), "/x.txt")
except modal.exception.NotFoundError as error:
    print("refused:", error)
"""
    text = assert_ok(run_python(server, script))
    assert "refused:" in text and "not found" in text


def test_large_file_streams_both_ways_in_bounded_server_memory(own_server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = own_server  # a fresh server, so its peak memory is this transfer's
    size = 1024 * 1024 * 1024
    source = tmp_path / "large.bin"
    with open(source, "wb") as file:
        file.writelines(os.urandom(64 * 1024 * 1024) for _ in range(size // (64 * 1024 * 1024)))
    assert_ok(run_modal(server, "volume", "create", "large-vol"))
    assert_ok(run_modal(server, "volume", "put", "large-vol", str(source), "/large.bin", timeout=600))
    down = tmp_path / "down"
    down.mkdir()
    assert_ok(run_modal(server, "volume", "get", "large-vol", "/large.bin", str(down), timeout=600))
    assert filecmp.cmp(source, down / "large.bin", shallow=False)
    assert server.process is not None
    status = open(f"/proc/{server.process.pid}/status").read()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    print("server peak memory KiB", peak_kib)
    assert peak_kib < 400 * 1024, f"server peak memory {peak_kib} KiB for a {size} byte file"
    assert_ok(run_modal(server, "volume", "delete", "large-vol", "--yes"))

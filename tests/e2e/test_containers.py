"""Containers: resource limits (memory=, cpu=), block_network, and refused escapes."""

from __future__ import annotations

from tests.conftest import Server, assert_ok, run_modal, run_python


def test_exceeding_memory_fails_the_input_and_the_function_keeps_serving(server: Server) -> None:
    script = """
from limits_app import app, allocate
with app.run():
    print("small", allocate.remote(50))
    try:
        allocate.remote(600)
    except Exception as error:
        print("big:", error)
    print("after", allocate.remote(50))
"""
    text = assert_ok(run_python(server, script))
    assert "small 50" in text
    assert "big: the container exceeded its memory limit of 200 MiB" in text
    assert "after 50" in text  # a fresh container took over


def test_cpu_quota_limits_a_busy_loop(server: Server) -> None:
    text = assert_ok(run_python(server, "from limits_app import app, burn\nwith app.run():\n    print('cores', burn.remote(2.0))"))
    cores = float(text.split("cores ")[1].split()[0])
    assert cores < 0.35, cores  # cpu=0.25; unlimited it would be close to 1.0


PROBE = '''
import socket, subprocess, modal
app = modal.App("probe")

def probe():
    names = sorted(name for _, name in socket.if_nameindex())
    try:
        socket.create_connection(("127.0.0.1", SERVER_PORT), timeout=2).close()
        reach = "reached"
    except OSError as error:
        reach = type(error).__name__
    mount = subprocess.run(["mount", "-t", "tmpfs", "none", "/mnt"], capture_output=True, text=True)
    try:
        socket.sethostname("escaped")
        rename = "renamed"
    except PermissionError:
        rename = "refused"
    return {"interfaces": names, "server": reach, "mount_exit": mount.returncode, "hostname": rename}

@app.function(block_network=True)
def blocked():
    return probe()

@app.function()
def default():
    return probe()

@app.local_entrypoint()
def main():
    print("BLOCKED", blocked.remote())
    print("DEFAULT", default.remote())
'''


def test_block_network_leaves_only_loopback_and_escapes_are_refused(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "probe.py").write_text(PROBE.replace("SERVER_PORT", str(server.port)))
    text = assert_ok(run_modal(server, "run", "probe.py", cwd=tmp_path))
    blocked = eval(text.split("BLOCKED ", 1)[1].splitlines()[0])
    default = eval(text.split("DEFAULT ", 1)[1].splitlines()[0])
    # block_network=True: only lo, the server's TCP port is out of reach, yet the function
    # ran: the control plane is reached over a Unix socket.
    assert blocked["interfaces"] == ["lo"] and blocked["server"] == "ConnectionRefusedError"
    assert len(default["interfaces"]) > 1
    for result in (blocked, default):
        assert result["mount_exit"] != 0  # no CAP_SYS_ADMIN
        assert result["hostname"] == "refused"

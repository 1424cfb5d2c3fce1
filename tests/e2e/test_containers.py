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


def test_gpus_are_assigned_exclusively_and_impossible_requests_fail_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import start_server

    gpu_server = start_server(tmp_path, server_env={"HOMEPORT_GPUS": "T4:1"})  # a fake inventory: one T4
    try:
        script = """
import time
from gpu_app import app, wants_a100, wants_t4, h100_or_t4
with app.run():
    started = time.monotonic()
    try:
        wants_a100.remote()
    except Exception as error:
        print("a100:", error, "after", round(time.monotonic() - started, 1))
    print("t4 devices", repr(wants_t4.remote()))
    print("fallback devices", repr(h100_or_t4.remote()))
    started = time.monotonic()
    calls = [wants_t4.spawn(2.0), wants_t4.spawn(2.0)]
    print("both", [c.get(timeout=120) for c in calls], "took", round(time.monotonic() - started, 1))
"""
        text = assert_ok(run_python(gpu_server, script, timeout=300))
        assert "a100: gpu='A100' cannot be satisfied on this cluster, which has 1 x T4" in text
        assert float(text.split("a100:")[1].split("after ")[1].split()[0]) < 10  # at once, not after a wait
        assert "t4 devices '0'" in text
        assert "fallback devices '0'" in text  # no H100 here: the T4 fallback ran it
        both = text.split("both ")[1]
        assert both.startswith("['0', '0']") and float(both.split("took ")[1].split()[0]) >= 3.9  # one after the other
    finally:
        gpu_server.stop()

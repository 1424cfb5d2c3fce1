"""Containers forked from a zygote: the user's module is imported in each container, after
the fork, so its import-time state is its own. Functional, not timed (see bench/)."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import APPS, VENV_BIN, Server, assert_ok, run_python


def test_forked_containers_get_fresh_import_time_state(server: Server) -> None:
    text = assert_ok(
        run_python(
            server,
            "from fresh_state_app import app, state\nwith app.run():\n    print('STATES', list(state.map(range(4))))\n",
        )
    )
    states = ast.literal_eval(text.split("STATES ", 1)[1].splitlines()[0])
    by_host = {s["host"]: s for s in states}
    assert len(by_host) >= 2, by_host
    # Had the zygote imported the user's module, every container would share these.
    assert len({s["token"] for s in by_host.values()}) == len(by_host)
    assert len({s["import_random"] for s in by_host.values()}) == len(by_host)
    # Had the random generator not been reseeded after the fork, containers would repeat it.
    assert len({s["call_random"] for s in states}) == len(states)
    assert len({s["urandom"] for s in states}) == len(states)
    log = server.log_path.read_text()
    for host in by_host:  # the hostname is the container's task id
        assert f"container {host} forked from zygote" in log, host


def test_an_image_cannot_use_its_zygote_to_reach_the_host(server: Server) -> None:
    """The zygote runs the image's own Python (and whatever start-up hooks the image has)
    with capabilities over namespaces of its own; what the host gave it stays read-only."""
    text = assert_ok(
        run_python(
            server,
            "from hostile_zygote_app import app, hello\nwith app.run():\n    print('HELLO', hello.remote())\n",
        )
    )
    host = text.split("HELLO hello from ", 1)[1].split()[0]
    log = server.log_path.read_text()
    assert f"container {host} forked from zygote" in log  # the hook ran in that zygote
    probe = ast.literal_eval(log.split("ZYGOTE-PROBE ", 1)[1].splitlines()[0])
    assert probe == {
        "host_sysctl": "EROFS",  # uid 0 there is the host's: a writable /proc/sys would be its sysctls
        "fresh_writable_proc": "EPERM",
        "client_package_writable": "EPERM",  # shared by every container on the node
        "image_writable": "EPERM",
        "zygote_script": "EROFS",
        "stage": "EROFS",  # where its containers' work directories appear
        "network_admin": "EPERM",  # no say over its containers' networks
    }, probe


def _zygotes_of(server: Server) -> list[int]:
    """Host pids of this server's zygotes (their Python, under unshare and bubblewrap)."""
    found, pending = [], [server.process.pid] if server.process else []
    while pending:
        pid = pending.pop()
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [
                b"python",
                b"/.homeport/zygote.py",
            ]:
                found.append(pid)
                continue
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def test_a_killed_zygote_loses_no_input(own_server: Server) -> None:
    """Its containers die with it (they must not outlive what forked them); their inputs
    go back to the queue (not the function's fault: no retry is used; `slow` has none) and
    run in containers started the ordinary way until a new zygote is up."""
    script = """
import time
from scaling_app import app, slow
with app.run():
    call = slow.spawn(1)
    time.sleep(1.0)  # the input is running in a forked container
    open(READY, "w").write("running")
    print("RESULT", call.get(timeout=120), slow.remote(2))
"""
    ready = own_server.data_dir.parent / "running"
    process = subprocess.Popen(
        [str(VENV_BIN / "python"), "-c", script.replace("READY", repr(str(ready)))],
        cwd=APPS, env=own_server.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    zygotes = _zygotes_of(own_server)
    assert zygotes, "no zygote was running"
    for pid in zygotes:
        os.kill(pid, signal.SIGKILL)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    hosts = output.split("RESULT ", 1)[1].split()[:2]
    assert all(host.startswith("ta-") for host in hosts), output  # both answered, by containers
    log = own_server.log_path.read_text()
    assert "is gone" in log  # the server saw it
    lost = [
        line.split("container ", 1)[1].split()[0]
        for line in log.splitlines()
        if "stopped: its zygote exited" in line
    ]
    assert lost, "no container was lost with the zygote"
    # The spawned input ran in a lost container and was answered by another, without a retry.
    assert hosts[0] not in lost, (hosts, lost)


def _host_interfaces() -> set[str]:
    """The host ends of container networks on this machine."""
    return {name for name in os.listdir("/sys/class/net") if name.startswith("hv")}


def test_cold_starts_become_exactly_their_own_container(own_server: Server) -> None:
    """A zygote keeps a child forked and networked ahead (its spare): each cold start takes
    it, and is still only itself: its own hostname, cgroups (with its limits) and address.
    Nothing of the spares stays on the host once the server stops."""
    before = _host_interfaces()
    script = """
import time
from identity_app import app, identity
with app.run():
    for _ in range(3):
        print("IDENTITY", identity.remote())
        time.sleep(4.5)  # past scaledown_window=2: the next call starts a container afresh
"""
    text = assert_ok(run_python(own_server, script))
    found = [
        ast.literal_eval(line.split("IDENTITY ", 1)[1]) for line in text.splitlines() if "IDENTITY " in line
    ]
    assert len({one["task"] for one in found}) == 3, found  # three containers, one after the other
    log = own_server.log_path.read_text()
    for one in found:
        task = one["task"]
        assert one["host"] == one["node"] == task
        assert one["cwd"] == "/root"  # the image's working directory, as `python -m` would start in
        assert f"container {task} forked from zygote" in log, task
        for controller in ("memory", "cpu", "pids"):
            assert any(
                line.split(":", 2)[1] == controller and line.endswith(f"/homeport/{task}")
                for line in one["cgroups"].splitlines()
            ), (controller, one["cgroups"])
        assert one["memory_limit"] == 300 * 1024 * 1024, one
        assert one["address"].startswith("10.89."), one
    own_server.stop()
    assert _host_interfaces() <= before, _host_interfaces() - before

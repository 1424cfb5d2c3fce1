"""Containers: resource limits (memory=, cpu=), block_network, and refused escapes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server, assert_ok, run_modal, run_python, start_server


@pytest.fixture(scope="module", params=["forked", "fresh"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Every isolation test runs twice: on containers forked from a zygote (the default)
    and on containers started from a fresh interpreter (HOMEPORT_ZYGOTES=0)."""
    zygotes = "1" if request.param == "forked" else "0"
    started = start_server(
        tmp_path_factory.mktemp(f"containers-{request.param}"), server_env={"HOMEPORT_ZYGOTES": zygotes}
    )
    yield started
    started.stop()


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
    text = assert_ok(
        run_python(
            server, "from limits_app import app, burn\nwith app.run():\n    print('cores', burn.remote(2.0))"
        )
    )
    cores = float(text.split("cores ")[1].split()[0])
    assert cores < 0.35, cores  # cpu=0.25; unlimited it would be close to 1.0


PROBE = """
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
"""


def test_block_network_leaves_only_loopback_and_escapes_are_refused(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "probe.py").write_text(PROBE.replace("SERVER_PORT", str(server.port)))
    text = assert_ok(run_modal(server, "run", "probe.py", cwd=tmp_path))
    blocked = eval(text.split("BLOCKED ", 1)[1].splitlines()[0])
    default = eval(text.split("DEFAULT ", 1)[1].splitlines()[0])
    # block_network=True: only lo, the server's TCP port is out of reach, yet the function
    # ran: the control plane is reached over a Unix socket.
    assert blocked["interfaces"] == ["lo"] and blocked["server"] == "ConnectionRefusedError"
    assert default["interfaces"] == ["eth0", "lo"]  # its own network namespace, not the host's
    assert default["server"] == "ConnectionRefusedError"  # 127.0.0.1 is its own loopback
    for result in (blocked, default):
        assert result["mount_exit"] != 0  # no CAP_SYS_ADMIN
        assert result["hostname"] == "refused"


SYS_PROBE = """
import errno, os, modal
app = modal.App("sys-probe")

@app.function(memory=300, cpu=0.5)
def look():
    def read(path):
        try:
            with open(path) as file:
                return file.read().strip()
        except OSError as error:
            return errno.errorcode[error.errno]
    try:
        with open("/sys/class/net/lo/mtu", "w") as file:
            file.write("1000")
        written = "written"
    except OSError as error:
        written = errno.errorcode[error.errno]
    return {
        "net": sorted(os.listdir("/sys/class/net")),
        "cpus_online": read("/sys/devices/system/cpu/online"),
        "cgroups": sorted(os.listdir("/sys/fs/cgroup")),
        "memory_limit": read("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        "cpu_quota": read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
        "write": written,
    }

@app.local_entrypoint()
def main():
    print("SYS", look.remote())
"""


def test_containers_see_a_read_only_sys_of_their_own(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "sys_probe.py").write_text(SYS_PROBE)
    text = assert_ok(run_modal(server, "run", "sys_probe.py", cwd=tmp_path))
    seen = eval(text.split("SYS ", 1)[1].splitlines()[0])
    assert seen["net"] == ["eth0", "lo"]  # its own interfaces, not the host's
    assert seen["cpus_online"].startswith("0")
    assert seen["cgroups"] == ["cpu", "cpuacct", "memory", "pids"]  # its own cgroups only
    assert seen["memory_limit"] == str(300 * 2**20)
    assert seen["cpu_quota"] == "50000"
    assert seen["write"] == "EROFS"


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
        assert (
            both.startswith("['0', '0']") and float(both.split("took ")[1].split()[0]) >= 3.9
        )  # one after the other
    finally:
        gpu_server.stop()


# Run inside a container: every container's way to the server is bound read-only, its
# mode not theirs (uid 0 inside owns the host's socket file: a chmod would cut every
# container on the node, of any workspace, off the server). Its own mode again: harmless
# if it were allowed.
CHMOD_CONTROL_SOCKET = """
def chmod_control_socket():
    import errno, os
    path = "/__homeport/grpc.sock"
    try:
        os.chmod(path, os.stat(path).st_mode & 0o7777)
        return "changed"
    except OSError as error:
        return errno.errorcode[error.errno]
"""

ESCAPES = (
    """
import ctypes, errno, os, modal
app = modal.App("escapes")
"""
    + CHMOD_CONTROL_SOCKET
    + """

@app.function()
def escapes():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def outcome(result):
        return "allowed" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

    attempts = {
        "mount": lambda: libc.mount(b"none", b"/mnt", b"tmpfs", 0, None),
        "unshare_user_namespace": lambda: libc.unshare(0x10000000),
        "unshare_mount_namespace": lambda: libc.unshare(0x00020000),
        "ptrace_attach_pid_1": lambda: libc.ptrace(16, 1, None, None),
        "init_module": lambda: libc.syscall(175, None, 0, b""),
        "reboot_disable_cad": lambda: libc.reboot(0),
        "keyctl_session_keyring": lambda: libc.syscall(250, 0, -3, 0),
        "bpf": lambda: libc.syscall(321, 0, None, 0),
        "sethostname": lambda: libc.sethostname(b"escaped", 7),
        "open_by_handle_at": lambda: libc.syscall(304, -100, None, 0),
        "clone_new_user_namespace": lambda: libc.syscall(56, 0x10000000 | 17, None, None, None, None),
        "io_uring_setup": lambda: libc.syscall(425, 1, None),
    }
    results = {name: outcome(attempt()) for name, attempt in attempts.items()}
    # kcmp: harmless on itself (0 without a filter), but on no list: what an allow-list refuses
    results["unlisted_kcmp"] = outcome(libc.syscall(312, os.getpid(), os.getpid(), 0, 0, 0))
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
    results["capabilities"] = status["CapEff"].strip()
    results["no_new_privs"] = status["NoNewPrivs"].strip()
    results["seccomp"] = status["Seccomp"].strip()
    results["host_paths"] = [p for p in ("HOST_REPO", "/var/cache/homeport", "/etc/postgresql") if os.path.exists(p)]
    try:  # the host kernel's settings (uid 0 could write these by plain file permissions)
        with open("/proc/sys/kernel/domainname", "w") as setting:
            setting.write("escaped")
        results["proc_sys"] = "written"
    except OSError as error:
        results["proc_sys"] = errno.errorcode[error.errno]
    results["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    results["control_socket_mode"] = chmod_control_socket()
    return results

@app.local_entrypoint()
def main():
    print("ESCAPES", escapes.remote())
"""
)


def test_escapes_from_a_container_are_refused(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import REPO

    (tmp_path / "escapes.py").write_text(ESCAPES.replace("HOST_REPO", str(REPO)))
    text = assert_ok(run_modal(server, "run", "escapes.py", cwd=tmp_path))
    results = eval(text.split("ESCAPES ", 1)[1].splitlines()[0])
    special = (
        "capabilities",
        "no_new_privs",
        "seccomp",
        "host_paths",
        "proc_sys",
        "processes",
        "unlisted_kcmp",
        "control_socket_mode",
    )
    refused = {name: value for name, value in results.items() if name not in special}
    assert all(value == "EPERM" for value in refused.values()), refused
    assert results["capabilities"] == "0000000000000000"
    assert results["no_new_privs"] == "1"
    assert results["seccomp"] == "2"  # a filter is installed
    assert results["unlisted_kcmp"] == "ENOSYS"  # an allow-list: what is on no list is refused
    assert results["host_paths"] == []  # none of the host's files
    assert results["proc_sys"] in ("EROFS", "EPERM", "EACCES")
    # uid 0 in a container owns the host's socket file: a chmod would cut every container
    # on the node (of any workspace) off the server. It is bound read-only.
    assert results["control_socket_mode"] == "EROFS"
    # A PID namespace of its own: its init and the entrypoint (no host or zygote processes).
    assert results["processes"][:2] == [1, 2] and len(results["processes"]) <= 3, results["processes"]


FORGER = """
import os, modal
app = modal.App("forger")

@app.function()
def victim():
    return "victim ran"

@app.function()
async def forge(foreign_dict_id: str, victim_function_id: str) -> dict:
    from grpclib.client import Channel
    from grpclib.exceptions import GRPCError
    from modal._serialization import serialize
    from modal_proto import api_grpc, api_pb2

    own = dict(pair.split(":", 1) for pair in os.environ["MODAL_OVERRIDE_HEADERS"].split(","))
    base = {"x-modal-client-version": modal.__version__}
    channel = Channel(path="/__homeport/grpc.sock")
    stub = api_grpc.ModalClientStub(channel)

    async def attempt(call, request, headers):
        try:
            await call(request, metadata={**base, **headers}, timeout=10)
            return "allowed"
        except GRPCError as error:
            return error.status.name

    results = {
        "foreign_dict_with_own_credential": await attempt(
            stub.DictGet, api_pb2.DictGetRequest(dict_id=foreign_dict_id, key=serialize("k")), own),
        "other_functions_inputs": await attempt(
            stub.FunctionGetInputs, api_pb2.FunctionGetInputsRequest(function_id=victim_function_id), own),
        "forged_task_secret": await attempt(
            stub.AppGetLayout, api_pb2.AppGetLayoutRequest(app_id=os.environ.get("MODAL_APP_ID", "")),
            {"x-homeport-task-id": own["x-homeport-task-id"], "x-homeport-task-secret": "guessed"}),
        "no_credential": await attempt(stub.DictGet, api_pb2.DictGetRequest(dict_id=foreign_dict_id, key=serialize("k")), {}),
    }
    channel.close()
    return results

@app.local_entrypoint()
def main(dict_id: str):
    print("FORGED", forge.remote(dict_id, victim.object_id))
    print("VICTIM", victim.remote())
"""


def test_forged_requests_from_a_container_are_refused(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert server.homeport("workspace", "create", "elsewhere").returncode == 0
    created = server.homeport("token", "create", "-w", "elsewhere")
    other = dict(line.split("=", 1) for line in created.stdout.split() if "=" in line)
    text = assert_ok(
        run_python(
            server,
            "import modal\nd = modal.Dict.from_name('private', create_if_missing=True)\nd['k'] = 'theirs'\n"
            "d.hydrate()\nprint('DICT', d.object_id)\n",
            **other,
        )
    )
    dict_id = text.split("DICT ", 1)[1].split()[0]
    (tmp_path / "forger.py").write_text(FORGER)
    text = assert_ok(run_modal(server, "run", "forger.py", "--dict-id", dict_id, cwd=tmp_path))
    forged = eval(text.split("FORGED ", 1)[1].splitlines()[0])
    assert (
        forged["foreign_dict_with_own_credential"] == "NOT_FOUND"
    )  # another workspace's object does not exist here
    assert forged["other_functions_inputs"] == "PERMISSION_DENIED"
    assert forged["forged_task_secret"] == "UNAUTHENTICATED"
    assert forged["no_credential"] == "UNAUTHENTICATED"
    assert "VICTIM victim ran" in text  # the victim's input was not taken


def test_gvisor_runtime_runs_functions_in_a_user_space_kernel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os as host_os

    from tests.conftest import start_server

    gvisor = start_server(tmp_path, server_env={"HOMEPORT_RUNTIME": "gvisor"})
    try:
        (tmp_path / "kernel.py").write_text(
            "import os, socket, modal\napp = modal.App('kernel')\n"
            + CHMOD_CONTROL_SOCKET
            + "@app.function()\ndef kernel():\n"
            "    return os.uname().release, socket.gethostname() == os.environ['MODAL_TASK_ID'], chmod_control_socket()\n"
            "@app.function(block_network=True)\ndef offline():\n    return sorted(name for _, name in socket.if_nameindex())\n"
            "@app.local_entrypoint()\ndef main():\n    print('KERNEL', kernel.remote())\n    print('OFFLINE', offline.remote())\n"
        )
        text = assert_ok(run_modal(gvisor, "run", "kernel.py", cwd=tmp_path))
        release, own_hostname, socket_mode = eval(text.split("KERNEL ", 1)[1].splitlines()[0])
        assert release != host_os.uname().release  # gVisor's kernel answered, not the host's
        assert own_hostname is True
        # The server's socket is bound read-only here too (see the escapes test): its gofer
        # would otherwise pass a chmod by the container's root on to the host's file.
        assert socket_mode == "EROFS", socket_mode
        assert eval(text.split("OFFLINE ", 1)[1].splitlines()[0]) == ["lo"]
    finally:
        gvisor.stop()


NEIGHBOURS = """
import socket, time, modal
app = modal.App("neighbours")
board = modal.Dict.from_name("neighbours-board", create_if_missing=True)

@app.function()
def listener():
    server = socket.socket()
    server.bind(("0.0.0.0", 8000))
    server.listen()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect(("10.89.0.1", 9))  # no packet is sent: this only picks the source address
    ip = probe.getsockname()[0]
    board["listener"] = ip
    server.settimeout(12)
    try:
        server.accept()
        return "someone connected"
    except socket.timeout:
        return "nobody connected"

@app.function()
def neighbour():
    deadline = time.time() + 30
    while "listener" not in board and time.time() < deadline:
        time.sleep(0.2)
    ip = board["listener"]
    try:
        socket.create_connection((ip, 8000), timeout=3).close()
        return ip, "reached"
    except OSError as error:
        return ip, type(error).__name__

@app.function()
def big() -> bytes:
    return b"x" * (3 * 1024 * 1024)

@app.local_entrypoint()
def main():
    board.clear()
    waiting = listener.spawn()
    print("NEIGHBOUR", neighbour.remote())
    print("LISTENER", waiting.get())
    print("BIG", len(big.remote()))
"""


def test_containers_have_their_own_network_and_cannot_reach_each_other(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "neighbours.py").write_text(NEIGHBOURS)
    text = assert_ok(run_modal(server, "run", "neighbours.py", cwd=tmp_path))
    ip, outcome = eval(text.split("NEIGHBOUR ", 1)[1].splitlines()[0])
    assert ip.startswith("10.89.")  # its own eth0 address on the node's container network
    assert outcome != "reached"
    assert "LISTENER nobody connected" in text
    assert (
        "BIG 3145728" in text
    )  # payloads over 2 MiB travel by blob URL, reachable from the container network


def test_ephemeral_disk_bounds_the_writable_layer(server: Server) -> None:
    script = "from limits_app import app, write_files\nwith app.run():\n    print(write_files.remote(16))\n    print(write_files.remote(100))\n"
    text = assert_ok(run_python(server, script))
    assert "wrote 16 MiB" in text
    assert "refused: No space left on device" in text  # ephemeral_disk=64 (MiB)

"""modal.Sandbox through the real client (V2, its default): create, the entrypoint's stdio,
wait/poll/returncode, timeout and terminate, exec with live stdio, lookups and tags."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess

from grpclib import GRPCError, Status
from grpclib.client import Channel
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as tcr
from modal_proto.task_command_router_grpc import TaskCommandRouterStub

from tests.conftest import MODAL, Server, assert_ok, output, run_modal, run_python, start_server
from tests.e2e.test_auth import call_raw, user_metadata

PRELUDE = """
import json, time, modal
app = modal.App.lookup("sandboxes-e2e", create_if_missing=True)
"""


def run_sandbox_script(server: Server, body: str, timeout: float = 300, **env: str) -> str:
    return assert_ok(run_python(server, PRELUDE + body, timeout=timeout, **env))


def test_entrypoint_output_exit_code_and_poll(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
sb = modal.Sandbox.create("sh", "-c", "read line; echo got $line; echo warn >&2; sleep 1; exit 3", app=app)
assert sb.object_id.startswith("sb-")
print("POLL", sb.poll())
sb.stdin.write(b"hello\\n"); sb.stdin.write_eof(); sb.stdin.drain()
print("OUT", repr(sb.stdout.read()), "ERR", repr(sb.stderr.read()))
sb.wait(raise_on_termination=False)
print("CODE", sb.returncode, sb.poll())
""",
    )
    assert "POLL None" in text
    assert "OUT 'got hello\\n' ERR 'warn\\n'" in text
    assert "CODE 3 3" in text


def test_timeout_is_124_and_terminate_is_137(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
slow = modal.Sandbox.create("sleep", "600", app=app, timeout=2)
try:
    slow.wait()
except modal.exception.SandboxTimeoutError:
    print("TIMED OUT", slow.returncode)
idle = modal.Sandbox.create("sleep", "600", app=app, idle_timeout=2)
print("LONG EXEC", idle.exec("sleep", "3").wait())  # an exec running (and waited on) is activity
print("ALIVE AFTER A LONG EXEC", idle.poll())
idle.wait(raise_on_termination=False)
print("IDLE ENDED", idle.returncode)
held = modal.Sandbox.create("sleep", "600", app=app)
held.terminate()
held.wait(raise_on_termination=False)
print("TERMINATED", held.returncode)
held.terminate()  # a no-op once it has finished
try:
    held.exec("true").wait()
except modal.exception.Error as error:
    print("EXEC AFTER END", type(error).__name__)
""",
    )
    assert "TIMED OUT 124" in text
    assert "LONG EXEC 0" in text and "ALIVE AFTER A LONG EXEC None" in text and "IDLE ENDED 137" in text
    assert "TERMINATED 137" in text
    assert "EXEC AFTER END ConflictError" in text


def test_exec_streams_stdin_exit_codes_and_environment(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
sb = modal.Sandbox.create("sleep", "infinity", app=app)
p = sb.exec("sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done; echo done >&2; exit 5")
first = next(iter(p.stdout))  # streamed as produced, before the process has finished
print("FIRST", repr(first), p.poll())
print("REST", repr(p.stdout.read()), "ERR", repr(p.stderr.read()), "CODE", p.wait())
cat = sb.exec("cat", text=False)
cat.stdin.write(b"\\x00\\x01bytes"); cat.stdin.write_eof(); cat.stdin.drain()
print("CAT", cat.stdout.read(), cat.wait())
env = sb.exec("sh", "-c", "echo $GREETING $(pwd)", env={"GREETING": "hi"}, workdir="/tmp")
print("ENV", env.stdout.read().strip())
missing = sb.exec("no-such-binary")
print("MISSING", missing.wait(), repr(missing.stderr.read()))
print("KILLED", sb.exec("sh", "-c", "kill -9 $$").wait())
timed = sb.exec("sh", "-c", "sleep 3; echo late > /tmp/late", timeout=1)
print("EXEC TIMEOUT", timed.wait())
time.sleep(3)
print("LATE", sb.exec("sh", "-c", "cat /tmp/late 2>/dev/null || echo killed in time").stdout.read().strip())
background = sb.exec("sh", "-c", "sleep 60 & echo started")  # the child keeps the pipe open
print("BACKGROUND", background.wait(), repr(background.stdout.read()))
print("BAD ARGUMENT", sb.exec("echo", "a" + chr(0) + "b").wait())
head = sb.exec("head", "-n1")
head.stdin.write(b"one\\n"); head.stdin.drain(); head.wait()
try:
    head.stdin.write(b"two\\n"); head.stdin.drain()
except Exception as error:
    print("STDIN AFTER EXIT", type(error).__name__)
print("STILL SERVING", sb.exec("true").wait())
many = [sb.exec("sh", "-c", f"sleep 0.5; echo {i}") for i in range(8)]
print("MANY", sorted(int(p.stdout.read()) for p in many))
sb.terminate()
""",
    )
    assert "FIRST 'line 1\\n' None" in text
    assert "REST 'line 2\\nline 3\\n' ERR 'done\\n' CODE 5" in text
    assert "CAT b'\\x00\\x01bytes' 0" in text
    assert "ENV hi /tmp" in text
    assert "MISSING 127 'no-such-binary: command not found\\n'" in text
    assert "KILLED 137" in text
    # The client stops waiting at its deadline (-1) unless the server's kill at the same
    # moment answered first (137); either way the process was killed.
    assert ("EXEC TIMEOUT -1" in text or "EXEC TIMEOUT 137" in text) and "LATE killed in time" in text
    assert "MANY [0, 1, 2, 3, 4, 5, 6, 7]" in text
    assert "BACKGROUND 0 'started\\n'" in text
    assert "BAD ARGUMENT 126" in text
    assert "STILL SERVING 0" in text


def test_exec_runs_in_an_image_without_python(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
image = modal.Image.from_registry("debian:bookworm-slim")
sb = modal.Sandbox.create("sleep", "infinity", app=app, image=image)
p = sb.exec("sh", "-c", "command -v python3 python || echo no python here; cat /etc/debian_version")
print("OUT", repr(p.stdout.read()), p.wait())
sb.filesystem.make_directory("/notes")
sb.filesystem.write_text("written without python\\n", "/notes/a.txt")
print("FS", repr(sb.filesystem.read_text("/notes/a.txt")), [entry.path for entry in sb.filesystem.list_files("/notes")])
sb.terminate()
""",
        timeout=900,
    )
    assert "no python here" in text
    assert "FS 'written without python\\n'" in text and "a.txt" in text.split("FS ")[1]


def test_from_id_from_name_list_and_tags(server: Server) -> None:
    created = run_sandbox_script(
        server,
        """
sb = modal.Sandbox.create("sleep", "infinity", app=app, name="named-one")
sb.set_tags({"team": "a", "job": "1"})
other = modal.Sandbox.create("sleep", "infinity", app=app)
other.set_tags({"team": "b"})
try:
    modal.Sandbox.create("sleep", "infinity", app=app, name="named-one")
except modal.exception.AlreadyExistsError as error:
    print("TAKEN", error)
print("IDS", sb.object_id, other.object_id)
""",
    )
    assert "TAKEN" in created and "named-one" in created
    first, second = created.split("IDS ")[1].split()
    text = run_sandbox_script(
        server,
        f"""
sb = modal.Sandbox.from_id({first!r})
print("TAGS", sorted(sb.get_tags().items()))
print("FROM NAME", modal.Sandbox.from_name("sandboxes-e2e", "named-one").object_id)
print("TEAM A", [s.object_id for s in modal.Sandbox.list(app_id=app.app_id, tags={{"team": "a"}})])
listed = [s.object_id for s in modal.Sandbox.list(app_id=app.app_id)]
print("ORDER", listed.index({second!r}) < listed.index({first!r}))
print("EXEC", sb.exec("echo", "from another process").stdout.read().strip())
for s in (sb, modal.Sandbox.from_id({second!r})):
    s.terminate()
    s.wait(raise_on_termination=False)
try:
    modal.Sandbox.from_name("sandboxes-e2e", "named-one")
except modal.exception.NotFoundError:
    print("GONE")
""",
    )
    assert "TAGS [('job', '1'), ('team', 'a')]" in text
    assert f"FROM NAME {first}" in text
    assert f"TEAM A ['{first}']" in text
    assert "ORDER True" in text  # newest first
    assert "EXEC from another process" in text
    assert "GONE" in text


def test_another_workspaces_sandbox_is_not_found(server: Server) -> None:
    created = run_sandbox_script(
        server, 'sb = modal.Sandbox.create("sleep", "infinity", app=app)\nprint("ID", sb.object_id)\n'
    )
    sandbox_id = created.split("ID ")[1].split()[0]
    assert server.homeport("workspace", "create", "sandbox-intruder").returncode == 0
    token = server.homeport("token", "create", "--workspace", "sandbox-intruder")
    other = dict(line.split("=", 1) for line in token.stdout.split())
    probe = run_python(
        server,
        f"import modal\nsb = modal.Sandbox.from_id({sandbox_id!r})\nprint(sb.poll())",
        **other,
    )
    assert probe.returncode != 0 and "NotFoundError" in output(probe), output(probe)
    run_sandbox_script(server, f"modal.Sandbox.from_id({sandbox_id!r}).terminate()\n")


def test_filesystem_reads_writes_lists_and_reports_errors(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    local = tmp_path / "upload.bin"
    local.write_bytes(bytes(range(256)) * 4096)  # 1 MiB, every byte value
    text = run_sandbox_script(
        server,
        f"""
for image in (modal.Image.debian_slim(), modal.Image.from_registry("debian:bookworm-slim")):
    sb = modal.Sandbox.create("sleep", "infinity", app=app, image=image)
    fs = sb.filesystem
    fs.write_text("hello\\n", "/data/notes/a.txt")  # parents are made
    fs.write_bytes(b"\\x00\\xff", "/data/b.bin")
    fs.copy_from_local({str(local)!r}, "/data/big.bin")
    fs.copy_to_local("/data/big.bin", {str(tmp_path / "back.bin")!r})
    fs.make_directory("/data/empty")
    listed = sorted((f.name, f.type.value, f.size) for f in fs.list_files("/data"))
    info = fs.stat("/data/notes/a.txt")
    print("READ", repr(fs.read_text("/data/notes/a.txt")), fs.read_bytes("/data/b.bin"))
    print("LIST", listed)
    print("STAT", info.type.value, info.size, info.permissions)
    print("SEEN BY EXEC", sb.exec("cat", "/data/notes/a.txt").stdout.read().strip())
    fs.remove("/data/notes", recursive=True)
    for call in (lambda: fs.read_text("/data/notes/a.txt"), lambda: fs.remove("/data")):
        try:
            call()
        except Exception as error:
            print("ERROR", type(error).__name__)
    sb.terminate()
""",
        timeout=900,
    )
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    assert text.count("READ 'hello\\n' b'\\x00\\xff'") == 2
    assert (
        text.count(
            "LIST [('b.bin', 'file', 2), ('big.bin', 'file', 1048576), ('empty', 'directory', 4096), "
            "('notes', 'directory', 4096)]"
        )
        == 2
    ), text
    assert text.count("STAT file 6 rw-r--r--") == 2
    assert text.count("SEEN BY EXEC hello") == 2
    assert text.count("ERROR SandboxFilesystemNotFoundError") == 2
    assert text.count("ERROR SandboxFilesystemDirectoryNotEmptyError") == 2


def test_container_cli_lists_logs_execs_into_and_stops_a_sandbox(server: Server) -> None:
    created = run_sandbox_script(
        server,
        'sb = modal.Sandbox.create("sh", "-c", "echo to the logs; echo and stderr >&2; sleep infinity", app=app)\n'
        'print("IDS", sb.object_id, sb._get_task_id() if hasattr(sb, "_get_task_id") else "")\n'
        'print("FIRST LINE", next(iter(sb.stdout)))\n',
    )
    sandbox_id = created.split("IDS ")[1].split()[0]
    logs = assert_ok(run_modal(server, "container", "logs", sandbox_id))
    assert "to the logs" in logs and "and stderr" in logs
    listed = assert_ok(run_modal(server, "container", "list", "--json"))
    task_id = next(task["container_id"] for task in json.loads(listed) if sandbox_id in str(task))
    assert task_id.startswith("ta-") and task_id.endswith("V")
    assert "inside the sandbox" in assert_ok(
        run_modal(server, "container", "exec", task_id, "echo", "inside the sandbox")
    )
    # `modal shell` as typed at a terminal: `script` gives the client a terminal of its own.
    command = f"{MODAL} shell {sandbox_id} --cmd tty"
    shell = subprocess.run(
        ["script", "-qec", command, "/dev/null"], env=server.env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shell.returncode == 0 and "/dev/pts/" in shell.stdout, output(shell)
    assert_ok(run_modal(server, "container", "stop", "--yes", task_id))
    ended = run_sandbox_script(
        server,
        f"sb = modal.Sandbox.from_id({sandbox_id!r})\nsb.wait(raise_on_termination=False)\nprint('CODE', sb.returncode)\n",
    )
    assert "CODE 137" in ended
    assert sandbox_id not in assert_ok(run_modal(server, "container", "list", "--json"))


def test_a_router_credential_opens_only_its_own_sandbox(server: Server) -> None:
    created = run_sandbox_script(
        server,
        'a = modal.Sandbox.create("sleep", "infinity", app=app)\n'
        'b = modal.Sandbox.create("sleep", "infinity", app=app)\n'
        'print("IDS", a.object_id, b.object_id)\n',
    )
    first, second = created.split("IDS ")[1].split()[:2]
    access = {
        sandbox_id: call_raw(
            server,
            "SandboxGetCommandRouterAccess",
            api_pb2.SandboxGetCommandRouterAccessRequest(sandbox_id=sandbox_id),
            user_metadata(server),
        )
        for sandbox_id in (first, second)
    }
    second_task = call_raw(
        server,
        "SandboxGetTaskIdV2",
        api_pb2.SandboxGetTaskIdRequest(sandbox_id=second),
        user_metadata(server),
    ).task_id

    def exec_in_second(jwt: str) -> Status:
        async def go() -> Status:
            host, port = access[first].url.removeprefix("http://").split(":")
            channel = Channel(host, int(port))
            try:
                await TaskCommandRouterStub(channel).TaskExecStart(
                    tcr.TaskExecStartRequest(task_id=second_task, exec_id="x", command_args=["true"]),
                    metadata={"authorization": f"Bearer {jwt}"},
                    timeout=10,
                )
                return Status.OK
            except GRPCError as error:
                return error.status
            finally:
                channel.close()

        return asyncio.run(go())

    assert exec_in_second(access[first].jwt) == Status.PERMISSION_DENIED
    assert exec_in_second(access[first].jwt[:-4] + "AAAA") == Status.UNAUTHENTICATED  # forged
    assert exec_in_second(access[second].jwt) == Status.OK
    run_sandbox_script(
        server, f"for i in ({first!r}, {second!r}):\n    modal.Sandbox.from_id(i).terminate()\n"
    )


def test_readiness_probes_tcp_and_exec(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
served = modal.Sandbox.create(
    "sh", "-c", "sleep 1; exec python3 -m http.server 8080", app=app,
    readiness_probe=modal.Probe.with_tcp(8080, interval_ms=50), block_network=True,
)
started = time.monotonic()
served.wait_until_ready(timeout=60)
print("TCP READY AFTER", round(time.monotonic() - started, 1))
fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/').status)"
print("FETCH", served.exec("python3", "-c", fetch).stdout.read().strip())
flag = modal.Sandbox.create(
    "sh", "-c", "sleep 1; touch /tmp/ready; sleep infinity", app=app,
    readiness_probe=modal.Probe.with_exec("test", "-f", "/tmp/ready"),
)
flag.wait_until_ready(timeout=60)
print("EXEC READY", flag.exec("ls", "/tmp/ready").stdout.read().strip())
never = modal.Sandbox.create("sleep", "infinity", app=app, readiness_probe=modal.Probe.with_tcp(9))
try:
    never.wait_until_ready(timeout=2)
except modal.exception.TimeoutError:
    print("NEVER READY: timed out")
plain = modal.Sandbox.create("sleep", "infinity", app=app)
try:
    plain.wait_until_ready(timeout=5)
except modal.exception.Error as error:
    print("NO PROBE", type(error).__name__, error)
for sb in (served, flag, never, plain):
    sb.terminate()
""",
    )
    ready_after = float(text.split("TCP READY AFTER ")[1].split()[0])
    assert ready_after >= 0.9, text  # not before the server listened
    assert "FETCH 200" in text
    assert "EXEC READY /tmp/ready" in text
    assert "NEVER READY: timed out" in text
    assert "NO PROBE ConflictError" in text and "without a readiness probe" in text


def test_snapshot_filesystem_makes_an_image_for_sandboxes_and_functions(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
sb = modal.Sandbox.create("sleep", "infinity", app=app)
setup = "mkdir -p /data && echo kept > /data/note && rm /etc/issue && echo changed > /etc/motd"
assert sb.exec("sh", "-c", setup).wait() == 0
image = sb.snapshot_filesystem()
sb.exec("sh", "-c", "echo after > /data/later").wait()  # after the snapshot: not in it
sb.terminate()
print("IMAGE", image.object_id)
check = "cat /data/note /etc/motd; ls /data; test -e /etc/issue && echo issue-there || echo issue-gone"
again = modal.Sandbox.create("sh", "-c", check, app=app, image=image)
print("FROM SNAPSHOT", repr(again.stdout.read()))
again.wait()

fn_app = modal.App("snapshot-user")

@fn_app.function(image=modal.Image.from_id(image.object_id), serialized=True)
def read_note():
    return open("/data/note").read().strip()

with fn_app.run():
    print("FUNCTION SEES", read_note.remote())
""",
    )
    assert "IMAGE im-" in text
    assert "FROM SNAPSHOT 'kept\\nchanged\\nnote\\nissue-gone\\n'" in text
    assert "FUNCTION SEES kept" in text


ECHO_SERVER = (
    "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind(('0.0.0.0', 9000)); s.listen()\\nwhile True:\\n c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()"
)


def test_tunnels_reach_the_sandbox_over_tls_and_raw_tcp(server: Server) -> None:
    """encrypted_ports: an https URL whose certificate Homeport's CA signed (trusted here
    through SSL_CERT_FILE, as the README says); unencrypted_ports: a raw TCP socket."""
    bundle = server.data_dir / "tls" / "ca-bundle.pem"
    text = run_sandbox_script(
        server,
        f"""
import socket, ssl, urllib.request
both_up = "import socket; [socket.create_connection(('127.0.0.1', p)).close() for p in (8000, 9000)]"
sb = modal.Sandbox.create(
    "sh", "-c", "cd /etc && python3 -m http.server 8000 & exec python3 -c \\"$ECHO\\"", app=app,
    env={{"ECHO": {ECHO_SERVER!r}.replace("\\\\n", "\\n")}},
    encrypted_ports=[8000], unencrypted_ports=[9000], readiness_probe=modal.Probe.with_exec("python3", "-c", both_up),
)
sb.wait_until_ready(timeout=60)
tunnels = sb.tunnels()
print("URL", tunnels[8000].url)
sb.exec("sh", "-c", "echo written-in-the-sandbox > /etc/tunnel-check").wait()
print("HTTPS SERVED", urllib.request.urlopen(tunnels[8000].url + "/tunnel-check", timeout=30).read())
host, port = tunnels[9000].tcp_socket
with socket.create_connection((host, port), timeout=30) as raw:
    raw.sendall(b"ping")
    print("TCP ECHO", raw.recv(100))
try:
    urllib.request.urlopen(tunnels[8000].url, timeout=30, context=ssl.create_default_context(cafile="/etc/ssl/certs/ca-certificates.crt"))
except urllib.error.URLError as error:
    print("UNTRUSTED WITHOUT THE CA", isinstance(error.reason, ssl.SSLCertVerificationError))
sb.terminate()
sb.wait(raise_on_termination=False)
try:
    socket.create_connection(tunnels[9000].tcp_socket, timeout=5).close()
    print("TUNNEL AFTER END open")
except OSError:
    print("TUNNEL AFTER END closed")
""",
        SSL_CERT_FILE=str(bundle),
    )
    assert "URL https://127.0.0.1:" in text
    assert "HTTPS SERVED b'written-in-the-sandbox\\n'" in text
    assert "TCP ECHO b'PING'" in text
    assert "UNTRUSTED WITHOUT THE CA True" in text
    assert "TUNNEL AFTER END closed" in text


def test_off_localhost_the_router_speaks_tls_from_homeports_ca(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Client 1.6.4 dials the router over plain HTTP/2 only when its server URL is on
    localhost; on another address (127.0.0.2 here: loopback, but not a name the client
    counts as localhost) it wants https with a certificate it can verify."""
    server = start_server(tmp_path, serve_args=["--host", "127.0.0.2"])
    try:
        assert "MODAL_SERVER_URL=http://127.0.0.2:" in (server.data_dir / "client.env").read_text()
        script = """
sb = modal.Sandbox.create("sleep", "infinity", app=app)
print("EXEC", sb.exec("echo", "over tls").stdout.read().strip())
sb.terminate()
"""
        bundle = str(server.data_dir / "tls" / "ca-bundle.pem")
        trusted = run_sandbox_script(server, script, SSL_CERT_FILE=bundle)
        assert "EXEC over tls" in trusted
        # Without the CA the client cannot verify the router (client 1.6.4 then retries
        # quietly); check the certificate directly, as the client's default context would.
        router = server.log_text().split("sandbox command router at https://")[1].split()[0]
        host, port = router.rsplit(":", 1)
        for cafile, expected in ((None, "CERTIFICATE_VERIFY_FAILED"), (bundle, "h2")):
            context = ssl.create_default_context(cafile=cafile)
            context.set_alpn_protocols(["h2"])
            try:
                with socket.create_connection((host, int(port)), timeout=10) as raw:
                    with context.wrap_socket(raw, server_hostname=host) as tls:
                        outcome = tls.selected_alpn_protocol()
            except ssl.SSLCertVerificationError as error:
                outcome = str(error)
            assert expected in str(outcome), (cafile, outcome)
    finally:
        server.stop()


def test_volumes_are_mounted_and_committed_when_the_sandbox_ends(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
import io
vol = modal.Volume.from_name("sandbox-volume-e2e", create_if_missing=True)
with vol.batch_upload(force=True) as batch:
    batch.put_file(io.BytesIO(b"seeded outside"), "/seed.txt")
work = "cat /data/seed.txt; echo; echo made-inside > /data/made.txt; rm /data/seed.txt; sleep 1"
sb = modal.Sandbox.create("sh", "-c", work, app=app, volumes={"/data": vol})
print("SAW", repr(sb.stdout.read()))
print("BEFORE THE END", sorted(entry.path for entry in vol.listdir("/")))
sb.wait()
print("AFTER", sorted(entry.path for entry in vol.listdir("/")), b"".join(vol.read_file("made.txt")))
ro = modal.Sandbox.create("sh", "-c", "touch /ro/x 2>&1; ls /ro", app=app, volumes={"/ro": vol.read_only()})
print("READ ONLY", repr(ro.stdout.read()))
ro.wait()
print("STILL", sorted(entry.path for entry in vol.listdir("/")))
""",
    )
    assert "SAW 'seeded outside\\n'" in text
    assert "BEFORE THE END ['seed.txt']" in text
    assert "AFTER ['made.txt'] b'made-inside\\n'" in text
    assert "Read-only file system" in text and "made.txt" in text.split("READ ONLY")[1]
    assert "STILL ['made.txt']" in text


def test_outbound_and_inbound_cidr_allowlists(server: Server) -> None:
    """The node's bridge address (where a container reaches the server's blob port) is
    reachable from a sandbox allowed it and refused at once to one that is not; tunnels
    admit only the inbound ranges given."""
    text = run_sandbox_script(
        server,
        f"""
import socket
reach = (
    "import socket, struct\\n"
    "route = [l.split() for l in open('/proc/net/route').readlines()[1:] if l.split()[1] == '00000000'][0]\\n"
    "gateway = socket.inet_ntoa(struct.pack('<L', int(route[2], 16)))\\n"
    "try:\\n"
    "    socket.create_connection((gateway, {server.port + 1}), timeout=10).close(); print('reached', gateway)\\n"
    "except OSError as error:\\n"
    "    print('refused', type(error).__name__)\\n"
)
for allow in (None, ["10.0.0.0/8"], ["192.0.2.0/24"]):
    sb = modal.Sandbox.create("sleep", "infinity", app=app, outbound_cidr_allowlist=allow)
    print("ALLOW", allow, sb.exec("python3", "-c", reach).stdout.read().strip())
    sb.terminate()
try:
    modal.Sandbox.create("true", app=app, outbound_cidr_allowlist=["not-a-range"])
except modal.exception.InvalidError as error:
    print("BAD RANGE", error)
for inbound in (["127.0.0.0/8"], ["192.0.2.0/24"]):
    sb = modal.Sandbox.create(
        "python3", "-m", "http.server", "8000", app=app, encrypted_ports=[8000], unencrypted_ports=[8000],
        inbound_cidr_allowlist=inbound, readiness_probe=modal.Probe.with_tcp(8000),
    )
    sb.wait_until_ready(timeout=60)
    try:
        with socket.create_connection(sb.tunnels()[8000].tcp_socket, timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            got = raw.recv(12)
    except ConnectionResetError:  # closed on it before it was answered
        got = b""
    print("INBOUND", inbound, got)
    sb.terminate()
""",
    )
    assert "ALLOW None reached 10." in text
    assert "ALLOW ['10.0.0.0/8'] reached 10." in text
    assert "ALLOW ['192.0.2.0/24'] refused ConnectionRefusedError" in text
    assert "BAD RANGE" in text and "'not-a-range' is not a CIDR range" in text
    assert "INBOUND ['127.0.0.0/8'] b'HTTP/1.0 200'" in text
    assert "INBOUND ['192.0.2.0/24'] b''" in text


def test_filesystem_watch_reports_changes_as_they_happen(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
import threading
from modal.types import FileWatchEventType
sb = modal.Sandbox.create("sh", "-c", "mkdir -p /tmp/w; sleep infinity", app=app)
time.sleep(1)
def change(d="d"):
    time.sleep(2)
    sb.exec("sh", "-c", f"echo a > /tmp/w/f; mkdir /tmp/w/{d}; sleep 0.5; echo b > /tmp/w/{d}/g; rm /tmp/w/f").wait()
threading.Thread(target=change).start()
for event in sb.filesystem.watch("/tmp/w", recursive=True, timeout=6):
    print("EVENT", event.type.value, event.paths)
threading.Thread(target=change, args=("e",)).start()
for event in sb.filesystem.watch("/tmp/w", recursive=True, filter=[FileWatchEventType.Create], timeout=6):
    print("CREATED", event.paths)
try:
    list(sb.filesystem.watch("/nowhere", timeout=1))
except modal.exception.SandboxFilesystemNotFoundError as error:
    print("MISSING", error)
sb.terminate()
""",
    )
    assert "EVENT Create ['/tmp/w/f']" in text
    assert "EVENT Modify ['/tmp/w/f']" in text
    assert "EVENT Create ['/tmp/w/d/g']" in text  # inside a directory made during the watch
    assert "EVENT Remove ['/tmp/w/f']" in text
    created = [line for line in text.splitlines() if line.startswith("CREATED")]
    assert created == ["CREATED ['/tmp/w/f']", "CREATED ['/tmp/w/e']", "CREATED ['/tmp/w/e/g']"], text
    assert "MISSING No such file or directory: /nowhere" in text


def test_exec_on_a_pseudo_terminal(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
sb = modal.Sandbox.create("sleep", "infinity", app=app)
p = sb.exec("sh", "-c", "tty; echo TERM=$TERM; stty size; read line; echo got $line >&2", pty=True)
p.stdin.write(b"typed\\n")
p.stdin.drain()
print("PTY", repr(p.stdout.read()), "ERR", repr(p.stderr.read()), "CODE", p.wait())
half = sb.exec("cat", pty=True)  # input ending mid-line still ends
half.stdin.write(b"abc")
half.stdin.write_eof()
half.stdin.drain()
print("MID-LINE EOF", repr(half.stdout.read()), half.wait())
sb.terminate()
""",
    )
    output_seen = text.split("PTY ")[1]
    assert "/dev/pts/" in output_seen and "TERM=" in output_seen
    assert "got typed" in output_seen  # stderr shares the terminal with stdout
    assert "ERR ''" in text and "CODE 0" in text
    assert "MID-LINE EOF 'abcabc' 0" in text  # echoed by the terminal, then written by cat


def test_pty_sandboxes_through_the_v2_and_the_v1_api(server: Server) -> None:
    """pty=True runs the entrypoint on a terminal. Client 1.6.4 makes such a sandbox through
    the V2 RPCs, but through the V1 ones when given `pty_info` (as for gpu=): V1-shaped ids,
    stdio over the main service, execs through the router as ever."""
    text = run_sandbox_script(
        server,
        """
import re
from modal._output.pty import get_pty_info
v2 = modal.Sandbox.create("sh", "-c", "tty; read x; echo got $x", pty=True, app=app)
v2.stdin.write(b"on v2\\n")
v2.stdin.drain()
print("V2 OUT", repr(v2.stdout.read()))
sb = modal.Sandbox.create("sh", "-c", "tty; read x; echo got $x; exit 5", pty_info=get_pty_info(shell=True), app=app)
print("V1 ID", bool(re.fullmatch(r"sb-[0-9A-Za-z]{22}", sb.object_id)))
print("EXEC", sb.exec("echo", "beside").stdout.read().strip())
sb.set_tags({"kind": "v1"})
print("LISTED", [s.object_id for s in modal.Sandbox.list(app_id=app.app_id, tags={"kind": "v1"})] == [sb.object_id])
sb.stdin.write(b"typed\\n")
sb.stdin.drain()
print("V1 OUT", repr(sb.stdout.read()))
sb.wait(raise_on_termination=False)
print("CODE", sb.returncode, modal.Sandbox.from_id(sb.object_id).returncode)
late = modal.Sandbox.create("sh", "-c", "echo read after the end", pty_info=get_pty_info(shell=True), app=app)
late.wait(raise_on_termination=False)
print("AFTER WAIT", repr(late.stdout.read()))
""",
    )
    assert "/dev/pts/" in text.split("V2 OUT")[1] and "got on v2" in text
    assert "read after the end" in text.split("AFTER WAIT ")[1]  # kept on its node once it ended
    assert "V1 ID True" in text
    assert "EXEC beside" in text
    assert "LISTED True" in text
    out = text.split("V1 OUT ")[1]
    assert "/dev/pts/" in out and "got typed" in out
    assert "CODE 5 5" in text


def test_gpu_sandboxes_get_their_own_gpu_and_wait_for_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On a node that has one T4 (HOMEPORT_GPUS stands in for nvidia-smi here)."""
    server = start_server(tmp_path, server_env={"HOMEPORT_GPUS": "T4:1"})
    try:
        text = run_sandbox_script(
            server,
            """
first = modal.Sandbox.create("sh", "-c", "echo devices=$CUDA_VISIBLE_DEVICES; sleep infinity", gpu="T4", app=app)
print("FIRST", first.stdout.readline().strip() if hasattr(first.stdout, "readline") else next(iter(first.stdout)).strip())
for gpu in ("T4", "H100"):
    try:
        modal.Sandbox.create("true", gpu=gpu, app=app)
    except modal.exception.Error as error:
        print("REFUSED", gpu, type(error).__name__, error)
first.terminate()
first.wait(raise_on_termination=False)
again = modal.Sandbox.create("sh", "-c", "echo devices=$CUDA_VISIBLE_DEVICES", gpu="T4", app=app)
print("AGAIN", again.stdout.read().strip())
""",
        )
    finally:
        server.stop()
    assert "FIRST devices=0" in text
    assert "REFUSED T4 ResourceExhaustedError" in text and "1 T4 GPU(s)" in text
    assert "REFUSED H100" in text and "H100" in text.split("REFUSED H100")[1].splitlines()[0]
    assert "AGAIN devices=0" in text


def test_sandboxes_started_ahead_are_each_their_own(server: Server) -> None:
    """After a sandbox of a kind starts, the node keeps more of that kind started, their
    supervisors waiting (agent/sandbox_pool.py). One taken from there must be no different
    from one started afresh: its own command, env=, secrets, workdir and filesystem."""
    offset = len(server.log_text())
    text = run_sandbox_script(
        server,
        """
line = 'echo "$WHO $TOKEN $(pwd) $(cat /tmp/mark 2>/dev/null || echo clean)"; echo mine > /tmp/mark; sleep infinity'
boxes = []
for i in range(4):
    sb = modal.Sandbox.create(
        "sh", "-c", line, app=app, env={"WHO": f"box{i}"}, workdir=f"/work{i}",
        secrets=[modal.Secret.from_dict({"TOKEN": f"secret{i}"})],
    )
    print("FIRST", next(iter(sb.stdout)).strip())
    print("EXEC", sb.exec("sh", "-c", 'echo "$WHO $TOKEN $(pwd)"').stdout.read().strip())
    boxes.append(sb)
for sb in boxes:
    sb.terminate()
""",
    )
    for i in range(4):
        assert f"FIRST box{i} secret{i} /work{i} clean" in text
        assert f"EXEC box{i} secret{i} /work{i}" in text
    assert server.log_text()[offset:].count("started ahead as") >= 2


def test_memory_and_cpu_limits_hold_and_too_much_is_refused(server: Server) -> None:
    text = run_sandbox_script(
        server,
        """
sb = modal.Sandbox.create("sleep", "infinity", app=app, memory=128, cpu=0.5)
hog = sb.exec("python3", "-c", "x = bytearray(600 * 2**20); print('allocated')")
print("HOG", hog.wait(), repr(hog.stdout.read()))
print("STILL RUNNING", sb.poll())
sb.terminate()
try:
    modal.Sandbox.create("true", app=app, memory=50_000_000)
except modal.exception.Error as error:
    print("TOO BIG", type(error).__name__, error)
""",
    )
    assert "HOG 137 ''" in text  # the memory limit holds: the process that outgrew it was killed
    assert "STILL RUNNING None" in text
    assert "TOO BIG ResourceExhaustedError" in text and "50000000" in text.split("TOO BIG")[1]


SANDBOX_FROM_A_FUNCTION = """
import modal

app = modal.App("sandbox-from-a-function")


@app.function(serialized=True)
def make() -> str:
    import os
    sb = modal.Sandbox.create("sh", "-c", "echo entry; cat", app=modal.App.lookup("inner-sandboxes", create_if_missing=True))
    first = next(iter(sb.stdout)).strip()
    p = sb.exec("sh", "-c", "echo exec-out; exit 3")
    out, code = p.stdout.read().strip(), p.wait()
    sb.terminate()
    sb.wait(raise_on_termination=False)
    return f"{first} {out} {code} {sb.returncode} {os.environ['HOMEPORT_NODE_ID']}"


with app.run():
    print("RESULT", make.remote())
"""


def test_sandboxes_from_inside_a_function(server: Server) -> None:
    """The client in a container reaches the control plane by its Unix socket, which it
    does not count as localhost: it dials the router over TLS, trusting Homeport's CA
    through the bundle bound into the container."""
    text = assert_ok(run_python(server, SANDBOX_FROM_A_FUNCTION, timeout=300))
    assert "RESULT entry exec-out 3 137 " in text, text[-3000:]

"""Cluster mode through the real client, on a whole cluster made on this machine by
scripts/cluster-local: PostgreSQL, a SeaweedFS S3 server, three Ray nodes (each its own
raylet, node agent, data directory and bridge) and two control-plane replicas.

One cluster serves every test here (about 1.5 GiB); the node-death test runs last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_LAYER_DIR, Server, assert_ok, output, run_modal, run_python
from tests.e2e.test_sandboxes import SANDBOX_FROM_A_FUNCTION

ROOT = Path(__file__).resolve().parents[2]

CLUSTER_LOCAL = str(ROOT / "scripts" / "cluster-local")
NODES = {"node-0", "node-1", "node-2"}

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("cluster")
    up = subprocess.run(
        [CLUSTER_LOCAL, "up", str(directory), "--nodes", "3", "--replicas", "2",
         "--gpus", "1=A10G:1", "--node-memory", "0=1024"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HOMEPORT_LAYER_DIR": TEST_LAYER_DIR},
    )  # fmt: skip
    try:
        assert up.returncode == 0, output(up)[-5000:]
        assert up.stdout.split()[-3:] == sorted(NODES), up.stdout
        yield directory
    finally:
        down = subprocess.run(
            [CLUSTER_LOCAL, "down", str(directory)], capture_output=True, text=True, timeout=300
        )
        assert down.returncode == 0, output(down)
        assert not (directory / "cluster.json").exists()


def replica(cluster: Path, index: int) -> Server:
    state = json.loads((cluster / "cluster.json").read_text())["replicas"][index]
    return Server(Path(state["data"]), state["port"], None, Path(state["log"]))


def live_replica(cluster: Path) -> Server:
    """A replica still running (the replica test kills one)."""
    for state in json.loads((cluster / "cluster.json").read_text())["replicas"]:
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            continue
        return Server(Path(state["data"]), state["port"], None, Path(state["log"]))
    raise AssertionError("no replica is running")


def wait_for_nodes(server: Server, count: int, timeout: float = 120) -> None:
    """Until the replica has placed agents on `count` nodes (they join within seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.log_text().count(" joined (") >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} nodes joined:\n{server.log_text()[-3000:]}")


def wait_until_no_containers(cluster: Path, timeout: float = 120) -> None:
    """Until every live replica's containers (an earlier test's, stopping) have exited and
    given their room back: placement spreads containers by the memory nodes have reserved,
    so a node still holding them would be passed over by a short map."""
    deadline = time.monotonic() + timeout
    for state in json.loads((cluster / "cluster.json").read_text())["replicas"]:
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            continue
        server = Server(Path(state["data"]), state["port"], None, Path(state["log"]))
        while True:
            listed = run_modal(server, "container", "list", "--json", timeout=60)
            if listed.returncode == 0 and json.loads(listed.stdout) == []:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"containers still running: {listed.stdout[-2000:]}{listed.stderr[-2000:]}"
                )
            time.sleep(1)


def test_map_runs_on_every_node(cluster: Path) -> None:
    server = replica(cluster, 0)
    wait_for_nodes(server, 3)
    result = run_modal(server, "run", "cluster_app.py::main", "--count", "24", "--seconds", "2", timeout=600)
    text = assert_ok(result)
    assert "NODES ['node-0', 'node-1', 'node-2'] 24" in text


def test_image_built_once_runs_on_every_node(cluster: Path) -> None:
    server = replica(cluster, 0)
    wait_until_no_containers(cluster)
    script = """
import cluster_app
with cluster_app.app.run():
    results = list(cluster_app.image_file.map([2.0] * 18))
print("RESULTS", sorted(set(results)))
"""
    text = assert_ok(run_python(server, script, timeout=600))
    # Every node ran the image (fetched from the object store), and it has its layer.
    assert "RESULTS [('node-0', 'built-once'), ('node-1', 'built-once'), ('node-2', 'built-once')]" in text
    assert server.log_text().count("RUN echo built-once") <= 1  # built at most once (cached since)


def test_volume_committed_on_one_node_is_read_on_every_node(cluster: Path) -> None:
    server = replica(cluster, 0)
    wait_until_no_containers(cluster)
    script = """
import cluster_app
with cluster_app.app.run():
    writer = cluster_app.write.remote("greeting.txt", "written on one node")
    results = list(cluster_app.read.map(["greeting.txt"] * 18, [2.0] * 18))
print("WRITER", writer)
print("READERS", sorted(set(results)))
"""
    text = assert_ok(run_python(server, script, timeout=600))
    for node in sorted(NODES):
        assert f"('{node}', 'written on one node')" in text, text[-3000:]


def test_gpu_function_lands_on_the_node_with_that_gpu(cluster: Path) -> None:
    server = replica(cluster, 0)
    script = """
import modal
import cluster_app
with cluster_app.app.run():
    print("GPU", cluster_app.gpu_node.remote())
    try:
        cluster_app.impossible_gpu.remote()
    except Exception as error:
        print("REFUSED", type(error).__name__, error)
"""
    started = time.monotonic()
    text = assert_ok(run_python(server, script, timeout=600))
    assert "GPU ('node-1', '0')" in text, text[-3000:]
    # Refused at once, naming what the cluster has.
    assert "REFUSED" in text and "H100" in text and "node-1" in text and "A10G" in text, text[-3000:]
    assert time.monotonic() - started < 300


def test_web_endpoint_on_a_worker_node_answers_through_the_gateway(cluster: Path) -> None:
    server = replica(cluster, 0)
    deploy = assert_ok(run_modal(server, "deploy", "cluster_app.py", timeout=600))
    url = next(word for word in deploy.split() if "node-page" in word and word.startswith("http"))
    with urllib.request.urlopen(url, timeout=120) as page:
        answer = json.loads(page.read())
    # node-0 has 1024 MiB for containers; the endpoint asks for more, so a worker node runs it.
    assert answer["node"] in ("node-1", "node-2"), answer


def test_spawn_through_one_replica_get_through_the_other(cluster: Path) -> None:
    first, second = replica(cluster, 0), replica(cluster, 1)
    assert first.client_env["MODAL_SERVER_URL"] != second.client_env["MODAL_SERVER_URL"]
    assert_ok(run_modal(first, "deploy", "cluster_app.py", timeout=600))
    spawned = assert_ok(
        run_python(
            first,
            "import modal\n"
            "call = modal.Function.from_name('cluster', 'where').spawn(1.0)\n"
            "print('CALL', call.object_id)\n",
        )
    )
    call_id = spawned.split("CALL ")[1].split()[0]
    got = assert_ok(
        run_python(
            second, f"import modal\nprint('GOT', modal.FunctionCall.from_id({call_id!r}).get(timeout=300))\n"
        )
    )
    assert any(f"GOT {node}" in got for node in NODES), got


SANDBOXES_ON_NODES = """
import socket, time, modal
app = modal.App.lookup("cluster-sandboxes", create_if_missing=True)
echo = "import socket; s = socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen()\\nwhile True:\\n c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()"
# More memory than node-0 has for containers: a worker node runs it.
sb = modal.Sandbox.create(
    "sh", "-c", 'echo "started on $HOMEPORT_NODE_ID"; python3 -c "$ECHO" & cat', app=app, memory=1500,
    env={"ECHO": echo}, unencrypted_ports=[9000], readiness_probe=modal.Probe.with_tcp(9000),
)
print("FIRST", next(iter(sb.stdout)).strip())
sb.wait_until_ready(timeout=60)
with socket.create_connection(sb.tunnels()[9000].tcp_socket, timeout=30) as raw:
    raw.sendall(b"ping")
    print("TCP ECHO", raw.recv(100))
secret = modal.Secret.from_dict({"GREETING": "hello from a secret"})
p = sb.exec("sh", "-c", 'echo "$GREETING, $WHO"; cat', secrets=[secret], env={"WHO": "exec"})
p.stdin.write(b"echoed back\\n"); p.stdin.write_eof(); p.stdin.drain()
print("EXEC", repr(p.stdout.read()), p.wait())
sb.filesystem.write_text("written through the node", "/tmp/note.txt")
print("FS", sb.filesystem.read_text("/tmp/note.txt"))
image = sb.snapshot_filesystem()
again = modal.Sandbox.create("cat", "/tmp/note.txt", app=app, image=image)
print("FROM SNAPSHOT", repr(again.stdout.read()))
idle = modal.Sandbox.create("sleep", "infinity", app=app, idle_timeout=2)
began = time.monotonic()
idle.wait(raise_on_termination=False)
print("IDLE ENDED", idle.returncode, time.monotonic() - began < 30)
gpu = modal.Sandbox.create("sh", "-c", 'echo "gpu on $HOMEPORT_NODE_ID devices=$CUDA_VISIBLE_DEVICES"', app=app, gpu="A10G")
print("GPU", gpu.stdout.read().strip())
gpu.wait(raise_on_termination=False)
print("KEEP", sb.object_id)
"""


def test_sandboxes_run_on_nodes_through_their_own_router_and_any_replica(cluster: Path) -> None:
    """Sandboxes in cluster mode: each node serves its sandboxes' stdio and execs itself
    (its own command router), its tunnels, snapshots and V1 stdio (gpu=) through the
    node; another replica reaches the same sandbox and terminates it."""
    first, second = replica(cluster, 0), replica(cluster, 1)
    wait_for_nodes(first, 3)
    wait_for_nodes(second, 3)
    text = assert_ok(run_python(first, SANDBOXES_ON_NODES, timeout=600))
    started_on = text.split("FIRST started on ")[1].split()[0]
    assert started_on in ("node-1", "node-2"), text[-3000:]
    assert "TCP ECHO b'PING'" in text
    assert "EXEC 'hello from a secret, exec\\nechoed back\\n' 0" in text
    assert "FS written through the node" in text
    assert "FROM SNAPSHOT 'written through the node'" in text
    assert "IDLE ENDED 137 True" in text, text[-3000:]
    assert "GPU gpu on node-1 devices=0" in text, text[-3000:]
    sandbox_id = text.split("KEEP ")[1].split()[0]
    other = f"""
import modal
sb = modal.Sandbox.from_id({sandbox_id!r})
print("OTHER EXEC", sb.exec("sh", "-c", "echo $HOMEPORT_NODE_ID").stdout.read().strip())
sb.terminate()
sb.wait(raise_on_termination=False)
print("CODE", sb.returncode)
"""
    text = assert_ok(run_python(second, other, timeout=300))
    assert f"OTHER EXEC {started_on}" in text, text
    assert "CODE 137" in text
    # From inside a function: the sandbox is placed on the function's node, whose router
    # its containers reach on the node's bridge address.
    text = assert_ok(run_python(first, SANDBOX_FROM_A_FUNCTION, timeout=600))
    node = text.split("RESULT entry exec-out 3 137 ")[1].split()[0]
    assert node in NODES, text[-3000:]


def test_killed_replica_others_keep_serving_and_its_input_is_not_lost(cluster: Path) -> None:
    """A call is spawned; the replica whose container runs its input is then killed
    (SIGKILL). The other replica takes over (the dead one's containers stopped, the input
    queued again) and the call's result arrives through it; it serves new calls too."""
    replicas = [replica(cluster, 0), replica(cluster, 1)]
    offsets = [len(r.log_text()) for r in replicas]
    assert_ok(run_modal(replicas[0], "deploy", "cluster_app.py", timeout=600))
    spawned = assert_ok(
        run_python(
            replicas[1],
            "import modal\n"
            "call = modal.Function.from_name('cluster', 'hold').spawn(10.0)\n"
            "print('CALL', call.object_id)\n",
        )
    )
    call_id = spawned.split("CALL ")[1].split()[0]
    # Each function's containers are placed by one replica (its home): find which.
    deadline = time.monotonic() + 120
    runner = None
    while runner is None and time.monotonic() < deadline:
        for index, (r, offset) in enumerate(zip(replicas, offsets, strict=True)):
            if "for hold (" in r.log_text()[offset:]:
                runner = index
        time.sleep(0.5)
    assert runner is not None
    survivor = replicas[1 - runner]
    time.sleep(3)  # its container holds the input now
    os.killpg(json.loads((cluster / "cluster.json").read_text())["replicas"][runner]["pid"], 9)
    got = assert_ok(
        run_python(
            survivor,
            f"import modal\nprint('GOT', modal.FunctionCall.from_id({call_id!r}).get(timeout=300))\n",
        )
    )
    assert any(f"GOT {node}" in got for node in NODES), got
    assert "is gone" in survivor.log_text()
    text = assert_ok(run_modal(survivor, "run", "cluster_app.py::main", "--count", "3", "--seconds", "0.1"))
    assert "NODES" in text


def test_postgres_restart_in_flight_calls_finish(cluster: Path) -> None:
    server = live_replica(cluster)
    script = """
import cluster_app
with cluster_app.app.run():
    results = list(cluster_app.where.map([4.0] * 6))
print("RESULTS", len(results))
"""
    client = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT / "tests" / "e2e" / "apps", env=server.env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(6)  # the app is running and its inputs are in flight
    restart = subprocess.run(
        [CLUSTER_LOCAL, "restart-postgres", str(cluster), "--down-for", "3"], capture_output=True, text=True
    )
    assert restart.returncode == 0, output(restart)
    out, _ = client.communicate(timeout=600)
    assert client.returncode == 0, out[-5000:]
    assert "RESULTS 6" in out


def test_memory_snapshot_taken_on_one_node_is_restored_on_others(cluster: Path) -> None:
    """enable_memory_snapshot=True: the node that took the snapshot shares it through the
    object store; containers on the other nodes are restored from it (the snap=True hook's
    token is the first container's), each with its own identity and node."""
    server = live_replica(cluster)  # an earlier test kills a replica
    wait_for_nodes(server, 3)
    assert_ok(run_modal(server, "deploy", "snapshot_app.py", timeout=600))
    script = """
import json, concurrent.futures, modal
Model = modal.Cls.from_name("snapshot-app", "Model")
first = Model().info.remote()
print("FIRST", json.dumps(first))
import time; time.sleep(15)  # the snapshot is taken and shared; the container scales down
with concurrent.futures.ThreadPoolExecutor(12) as pool:
    restored = list(pool.map(lambda _: Model().info.remote(3.0), range(12)))
print("RESTORED", json.dumps(restored))
"""
    text = assert_ok(run_python(server, script, timeout=600))
    first = json.loads(text.split("FIRST ", 1)[1].splitlines()[0])
    restored = json.loads(text.split("RESTORED ", 1)[1].splitlines()[0])
    assert all(info["loaded"] == first["loaded"] for info in restored), (first, restored)
    assert all(info["setup_task"] == info["task"] != first["task"] for info in restored)
    assert {info["node"] for info in restored} - {first["node"]}, (first["node"], restored)


def test_killed_node_inputs_run_elsewhere(cluster: Path) -> None:
    """Last: a node dies as in a power loss in the middle of a 30-input map; the map still
    returns all 30 results, and the node's containers leave `modal container list`."""
    server = live_replica(cluster)
    script = """
import cluster_app, time
with cluster_app.app.run():
    results = list(cluster_app.where.map([5.0] * 30))
print("RESULTS", len(results))
"""
    offset = len(server.log_text())
    client = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT / "tests" / "e2e" / "apps", env=server.env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while "on node-2: " not in server.log_text()[offset:] and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(4)  # node-2's containers hold inputs now
    on_node_2 = [
        line.split("started container ")[1].split()[0]
        for line in server.log_text()[offset:].splitlines()
        if "started container" in line and "on node-2: " in line
    ]
    assert on_node_2
    kill = subprocess.run([CLUSTER_LOCAL, "kill-node", str(cluster), "2"], capture_output=True, text=True)
    assert kill.returncode == 0, output(kill)
    killed_at = time.monotonic()
    out, _ = client.communicate(timeout=600)
    assert client.returncode == 0, out[-5000:]
    assert "RESULTS 30" in out
    log = server.log_text()
    assert "node node-2 left the cluster" in log, log[-3000:]
    assert time.monotonic() - killed_at < 300
    listed = assert_ok(run_modal(server, "container", "list", "--json"))
    assert not any(task_id in listed for task_id in on_node_2)

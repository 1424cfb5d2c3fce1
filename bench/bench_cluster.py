"""Cluster-mode benchmark, run on demand: `.venv/bin/python bench/bench_cluster.py`.

All on this machine, all in one run (the machine is noisy: compare within the run):
1. The single-node hot path on SQLite and on PostgreSQL: warm `.remote()` p50/p99 and
   `.map()` of 1,000 trivial inputs, one `homeport serve` each. On PostgreSQL also a
   Queue put+get round trip while another client's Dict write waits on a table lock
   (held from psql), against the same round trip with nothing waiting: a request waiting
   on the database must not hold up the others. (`--hot-path` runs only this part.)
2. Cluster mode (scripts/cluster-local) with 1 node and with 3 nodes: warm `.remote()`,
   cold `.remote()` (a new app: the first call starts a container), `.map()` of 1,000
   trivial inputs and of 48 inputs sleeping 1 s.
3. A node's death (power loss, `cluster-local kill-node`) in the middle of a map: seconds
   from the kill until its inputs were queued again (Ray marked it dead, the control plane
   saw it), and the map's duration with and without the death.

The nodes of a local cluster share this machine's two cores: more nodes add room
(memory, containers), not CPU. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from homeport.localcluster import start_postgres
from tests.conftest import APPS, TEST_LAYER_DIR, Server, run_python, start_server

CLUSTER_LOCAL = str(REPO / "scripts" / "cluster-local")

HOT_PATH = r"""
import json, statistics, time
from basics import app, identity

def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]

with app.run():
    identity.remote(1)
    warm = []
    for i in range(200):
        t = time.perf_counter()
        identity.remote(i)
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    assert list(identity.map(range(1000))) == list(range(1000))
    map_s = time.perf_counter() - t
print("RESULT", json.dumps({"warm_p50_ms": statistics.median(warm) * 1000,
                            "warm_p99_ms": percentile(warm, 0.99) * 1000, "map_per_s": 1000 / map_s}))
"""

CLUSTER = r"""
import json, statistics, time
import cluster_app
from basics import app as basics_app, identity

def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]

t = time.perf_counter()
with basics_app.run():
    identity.remote(0)  # cold: a new app, no container yet (the image is cached)
    cold = time.perf_counter() - t
    warm = []
    for i in range(200):
        t = time.perf_counter()
        identity.remote(i)
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    assert list(identity.map(range(1000))) == list(range(1000))
    map_s = time.perf_counter() - t
with cluster_app.app.run():
    list(cluster_app.where.map([0.1] * 6))  # the image on the nodes
    t = time.perf_counter()
    nodes = list(cluster_app.where.map([1.0] * 48))
    sleep_s = time.perf_counter() - t
print("RESULT", json.dumps({"cold_ms": cold * 1000, "warm_p50_ms": statistics.median(warm) * 1000,
                            "warm_p99_ms": percentile(warm, 0.99) * 1000, "map_per_s": 1000 / map_s,
                            "sleep_map_s": sleep_s, "nodes_used": len(set(nodes))}))
"""

KILL = r"""
import cluster_app
with cluster_app.app.run():
    print("RESULTS", len(list(cluster_app.where.map([4.0] * 30))))
"""


def result(text: str) -> dict:  # type: ignore[type-arg]
    return json.loads(text.split("RESULT ", 1)[1].splitlines()[0])


def measure(server: Server, script: str) -> dict:  # type: ignore[type-arg]
    done = run_python(server, script, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return result(done.stdout)


def hot_path(directory: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    figures = {}
    server = start_server(directory / "sqlite")
    try:
        measure(server, HOT_PATH)  # warm the image and caches
        figures["sqlite"] = measure(server, HOT_PATH)
    finally:
        server.stop()
    postgres, url = start_postgres(Path(tempfile.mkdtemp(prefix="homeport-bench-pg-")))
    server = start_server(directory / "postgres", database_url=url)
    try:
        measure(server, HOT_PATH)
        figures["postgresql"] = measure(server, HOT_PATH)
        figures["postgresql"].update(round_trip_beside_a_waiting_request(server, url))
    finally:
        server.stop()
        postgres.terminate()
        postgres.wait()
    return figures


QUEUE_ROUND_TRIP = r"""
import json, statistics, time, modal
q = modal.Queue.from_name("bench-free", create_if_missing=True)
q.put(0); q.get()
times = []
for i in range(100):
    t = time.perf_counter()
    q.put(i)
    q.get()
    times.append(time.perf_counter() - t)
print("RESULT", json.dumps({"p50_ms": statistics.median(times) * 1000}))
"""


def round_trip_beside_a_waiting_request(server: Server, url: str) -> dict[str, float]:
    """Queue round trip p50 alone, then while a Dict write waits on a table lock."""
    import psycopg2

    setup = "import modal\nmodal.Dict.from_name('held', create_if_missing=True)['k'] = 1"
    assert run_python(server, setup).returncode == 0
    alone = measure(server, QUEUE_ROUND_TRIP)["p50_ms"]
    locker = psycopg2.connect(url.replace("postgresql+psycopg2:", "postgresql:"))
    try:
        locker.cursor().execute("LOCK TABLE dict_entries IN ACCESS EXCLUSIVE MODE")
        held = subprocess.Popen(
            [sys.executable, "-c", "import modal\nmodal.Dict.from_name('held')['k'] = 2"],
            env=server.env(),
            cwd=APPS,
        )
        time.sleep(1.0)  # its request is waiting on the lock now
        beside = measure(server, QUEUE_ROUND_TRIP)["p50_ms"]
        assert held.poll() is None, "the Dict write should still be waiting"
    finally:
        locker.rollback()
        locker.close()
    assert held.wait(timeout=60) == 0
    return {"queue_rtt_p50_ms": alone, "queue_rtt_p50_beside_waiting_ms": beside}


def cluster_server(directory: Path) -> Server:
    state = json.loads((directory / "cluster.json").read_text())["replicas"][0]
    return Server(Path(state["data"]), state["port"], None, Path(state["log"]))


def up(directory: Path, nodes: int) -> Server:
    done = subprocess.run(
        [CLUSTER_LOCAL, "up", str(directory), "--nodes", str(nodes)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HOMEPORT_LAYER_DIR": TEST_LAYER_DIR},
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    server = cluster_server(directory)
    deadline = time.monotonic() + 120
    while server.log_text().count(" joined (") < nodes and time.monotonic() < deadline:
        time.sleep(0.5)
    return server


def log_time(line: str) -> float:
    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()  # the server logs local time


def node_death(directory: Path, server: Server) -> dict[str, float]:
    """A 30-input map (4 s each) without and then with node-2's death in the middle."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", KILL], cwd=APPS, env=server.env(), capture_output=True, text=True
    )
    assert "RESULTS 30" in done.stdout, (done.stdout + done.stderr)[-3000:]
    undisturbed_s = time.monotonic() - started
    offset = len(server.log_text())
    started = time.monotonic()
    client = subprocess.Popen([sys.executable, "-c", KILL], cwd=APPS, env=server.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    while "on node-2: " not in server.log_text()[offset:] and time.monotonic() - started < 300:
        time.sleep(0.2)
    time.sleep(3)
    killed_at = time.time()
    subprocess.run([CLUSTER_LOCAL, "kill-node", str(directory), "2"], check=True, capture_output=True)
    out, _ = client.communicate(timeout=600)
    assert "RESULTS 30" in out, out[-3000:]
    disturbed_s = time.monotonic() - started
    lines = server.log_text()[offset:].splitlines()
    # Its inputs are queued again when the control plane sees the node gone; containers
    # with free slots (or new ones) take them at once.
    requeued = next(log_time(line) for line in lines if "was lost (Ray marked it dead)" in line)
    return {
        "inputs_queued_again_s": requeued - killed_at,
        "map_undisturbed_s": undisturbed_s,
        "map_with_node_death_s": disturbed_s,
    }


def print_hot_path(figures: dict) -> None:  # type: ignore[type-arg]
    sqlite, postgres = figures["hot_path"]["sqlite"], figures["hot_path"]["postgresql"]
    print(f"hot path, PostgreSQL / SQLite: warm .remote() p50 {postgres['warm_p50_ms'] / sqlite['warm_p50_ms']:.2f}x, "
          f".map() throughput {postgres['map_per_s'] / sqlite['map_per_s']:.2f}x")  # fmt: skip
    print(f"PostgreSQL: Queue round trip p50 beside a request waiting on a lock / alone: "
          f"{postgres['queue_rtt_p50_beside_waiting_ms'] / postgres['queue_rtt_p50_ms']:.2f}x "
          f"({postgres['queue_rtt_p50_ms']:.1f} -> {postgres['queue_rtt_p50_beside_waiting_ms']:.1f} ms)")  # fmt: skip


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="homeport-bench-cluster-"))
    figures: dict = {"hot_path": hot_path(directory)}  # type: ignore[type-arg]
    print(json.dumps(figures), flush=True)
    if "--hot-path" in sys.argv[1:]:
        print_hot_path(figures)
        return
    for nodes in (1, 3):
        cluster = directory / f"cluster-{nodes}"
        server = up(cluster, nodes)
        try:
            measure(server, CLUSTER)  # images on the nodes, zygotes
            figures[f"{nodes}_nodes"] = measure(server, CLUSTER)
            print(json.dumps(figures[f"{nodes}_nodes"]), flush=True)
            if nodes == 3:
                figures["node_death"] = node_death(cluster, server)
        finally:
            subprocess.run([CLUSTER_LOCAL, "down", str(cluster)], capture_output=True, timeout=300)
    print(json.dumps(figures, indent=2))
    print_hot_path(figures)
    one, three = figures["1_nodes"], figures["3_nodes"]
    for key in ("cold_ms", "warm_p50_ms", "map_per_s", "sleep_map_s"):
        print(f"3 nodes / 1 node, {key}: {three[key] / one[key]:.2f}x ({one[key]:.1f} -> {three[key]:.1f})")
    death = figures["node_death"]
    print(f"node death: its inputs queued again {death['inputs_queued_again_s']:.1f} s after the kill; "
          f"30 x 4 s map {death['map_undisturbed_s']:.1f} s undisturbed, {death['map_with_node_death_s']:.1f} s "
          "with the death")  # fmt: skip


if __name__ == "__main__":
    main()

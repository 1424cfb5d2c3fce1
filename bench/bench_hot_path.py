"""The hot path (issue 15), run on demand: `.venv/bin/python bench/bench_hot_path.py`.

Starts its own server, deploys a small app and measures through the real modal client,
printing each figure beside a baseline from the same run:
- CPU per input, side by side: the server process (`/proc/<pid>/stat`), the client (its
  own `getrusage`), the containers (their cgroups' `cpuacct.usage`), for warm `.remote()`
  calls and for a `.map()`; a bare gRPC round trip's server CPU as the floor;
- warm `.remote()` p50/p99 and `.map()` inputs/s against Ray 2.60 (an actor call, tasks);
- Dict put/get p50 against a bare RPC (`ClientHello`: authentication and gRPC, nothing else),
  and against the same RPC made through the client's own call path (its blocking wrapper
  and event-loop thread, its retrying stub), which every Dict call also takes;
- cold `.remote()` p50 (scaled to zero, image cached);
- a backlog: 20,000 `.spawn()` calls enqueued as fast as the client can, the same
  function's drain rate meanwhile, and another function's warm `.remote()` during it
  against its idle latency;
- `--million`: 1,000,000 spawned calls held (a function that cannot drain them fast),
  the server's memory and the database's size as the backlog grows.
The gateway against uvicorn is `bench/bench_web.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import assert_ok, run_modal, run_python, start_server

COLD_CALLS = 15  # each after the function scaled to zero (5 s apart)

APP = """
import time, modal
app = modal.App("bench-hot-path")

@app.function(scaledown_window=600)
def identity(x):
    return x

@app.function(scaledown_window=600)
def other(x):
    return x

@app.function(scaledown_window=2)
def cold(x):
    return x

@app.function(scaledown_window=600, max_containers=4)
@modal.concurrent(max_inputs=8)
def drain(x):
    return x

@app.function(scaledown_window=600, max_containers=1)
def held(x):
    time.sleep(1)
    return x
"""

# Runs in the client's process; prints one RESULT line of JSON.
MEASURE = r"""
import asyncio, json, os, resource, statistics, subprocess, sys, time, urllib.request
from collections.abc import Sequence
from pathlib import Path
import modal
from grpclib.client import Channel
from google.protobuf.empty_pb2 import Empty
from modal_proto import api_grpc, api_pb2

from bench.cpu import containers_cpu, process_cpu  # the repository is on PYTHONPATH

SERVER_PID = int(os.environ["BENCH_SERVER_PID"])

def client_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def cpu_now():
    return process_cpu(SERVER_PID), client_cpu(), containers_cpu()

def per_item(before, after, n):
    return [(b - a) * 1000 / n for a, b in zip(before, after)]

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]

def finished(function):
    # Inputs of `function` finished so far, from the server's Prometheus metrics.
    text = urllib.request.urlopen(os.environ["BENCH_METRICS_URL"], timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("homeport_inputs_total{") and f'function="{function}"' in line)

async def bare(n):
    host, port = os.environ["MODAL_SERVER_URL"].removeprefix("http://").split(":")
    channel = Channel(host, int(port))
    stub = api_grpc.ModalClientStub(channel)
    metadata = {"x-modal-client-version": modal.__version__,
                "x-modal-token-id": os.environ["MODAL_TOKEN_ID"],
                "x-modal-token-secret": os.environ["MODAL_TOKEN_SECRET"]}
    times = []
    await stub.ClientHello(Empty(), metadata=metadata)
    before = cpu_now()
    for _ in range(n):
        t = time.perf_counter()
        await stub.ClientHello(Empty(), metadata=metadata)
        times.append(time.perf_counter() - t)
    after = cpu_now()
    channel.close()
    return times, per_item(before, after, n)

result = {}
identity = modal.Function.from_name("bench-hot-path", "identity")
other = modal.Function.from_name("bench-hot-path", "other")
cold = modal.Function.from_name("bench-hot-path", "cold")
drain = modal.Function.from_name("bench-hot-path", "drain")

times, cpu = asyncio.run(bare(500))
result["bare_p50"], result["bare_cpu"] = statistics.median(times), cpu

# The same RPC through the client's own call path (a blocking call crossing to the
# client's event-loop thread, its retrying stub wrapper), as every Dict call makes it:
# what a Dict call adds on top of this is the server's work and the Dict's own encoding.
from modal._utils.async_utils import synchronizer
from modal.client import _Client

async def _hello_through_client():
    client = await _Client.from_env()
    await client._stub.ClientHello(Empty())

hello = synchronizer.create_blocking(_hello_through_client)
for _ in range(30):
    hello()
through = []
for _ in range(300):
    t = time.perf_counter(); hello(); through.append(time.perf_counter() - t)
result["client_rpc_p50"] = statistics.median(through)

d = modal.Dict.from_name("bench-hot-path", create_if_missing=True)
d["warm"] = 1
puts, gets = [], []
for i in range(300):
    t = time.perf_counter(); d[f"k{i % 10}"] = i; puts.append(time.perf_counter() - t)
    t = time.perf_counter(); d[f"k{i % 10}"]; gets.append(time.perf_counter() - t)
result["dict_put_p50"], result["dict_get_p50"] = statistics.median(puts), statistics.median(gets)

identity.remote(0)
other.remote(0)
for i in range(50):
    identity.remote(i)
warm = []
before = cpu_now()
for i in range(500):
    t = time.perf_counter(); identity.remote(i); warm.append(time.perf_counter() - t)
after = cpu_now()
result["warm_p50"], result["warm_p99"] = statistics.median(warm), pct(warm, 0.99)
result["warm_cpu"] = per_item(before, after, len(warm))

MAP = int(os.environ["BENCH_MAP_INPUTS"])
list(identity.map(range(200)))
before = cpu_now()
t = time.perf_counter()
assert list(identity.map(range(MAP))) == list(range(MAP))
result["map_rate"] = MAP / (time.perf_counter() - t)
result["map_cpu"] = per_item(before, cpu_now(), MAP)

colds = []
COLD_CALLS = int(os.environ["BENCH_COLD_CALLS"])
for i in range(COLD_CALLS):
    time.sleep(5)  # past scaledown_window=2: no container left
    t = time.perf_counter(); cold.remote(i); colds.append(time.perf_counter() - t)
result["cold_p50"] = statistics.median(colds)

# The backlog: other's idle latency first, then again while 20,000 spawns go in.
idle = []
for i in range(100):
    t = time.perf_counter(); other.remote(i); idle.append(time.perf_counter() - t)
result["other_idle_p50"] = statistics.median(idle)
BACKLOG = int(os.environ["BENCH_BACKLOG"])
drain.remote(0)
# Another client (its own process, as another user would be) calls `other` meanwhile.
OTHER = '''
import json, os, sys, time, modal
other = modal.Function.from_name("bench-hot-path", "other")
other.remote(0)
times = []
print("READY", flush=True)
while not os.path.exists(sys.argv[1]):
    t = time.perf_counter(); other.remote(0); times.append(time.perf_counter() - t)
print("TIMES", json.dumps(times), flush=True)
'''
stop_file = f"/tmp/bench-hot-path-stop-{os.getpid()}"
caller = subprocess.Popen([sys.executable, "-c", OTHER, stop_file], stdout=subprocess.PIPE, text=True)
assert caller.stdout.readline().startswith("READY")

async def enqueue():
    calls = []
    sem = asyncio.Semaphore(64)
    async def one(i):
        async with sem:
            calls.append(await drain.spawn.aio(i))
    await asyncio.gather(*(one(i) for i in range(BACKLOG)))
    return calls

drained_before = finished("drain")
t, before = time.perf_counter(), client_cpu()
calls = asyncio.run(enqueue())
enqueue_s = time.perf_counter() - t
result["enqueue_client_cpu"] = (client_cpu() - before) * 1000 / BACKLOG
open(stop_file, "w").close()
busy = json.loads(caller.communicate()[0].split("TIMES ", 1)[1])
os.unlink(stop_file)
result["enqueue_rate"] = BACKLOG / enqueue_s
result["other_busy_p50"] = statistics.median(busy) if busy else float("nan")
result["other_busy_p99"] = pct(busy, 0.99) if busy else float("nan")
result["drained_during"] = finished("drain") - drained_before
result["enqueue_s"] = enqueue_s
t = time.perf_counter()
for c in calls[-200:]:
    c.get(timeout=900)
result["drain_tail_s"] = time.perf_counter() - t
print("RESULT", json.dumps(result))
"""

RAY = r"""
import json, os, statistics, time
import ray

ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)

@ray.remote(num_cpus=0)
class Echo:
    def call(self, x):
        return x

@ray.remote
def identity(x):
    return x

actor = Echo.remote()
for i in range(50):
    ray.get(actor.call.remote(i))
warm = []
for i in range(500):
    t = time.perf_counter(); ray.get(actor.call.remote(i)); warm.append(time.perf_counter() - t)
n = int(os.environ["BENCH_MAP_INPUTS"])
ray.get([identity.remote(i) for i in range(200)])
t = time.perf_counter()
assert ray.get([identity.remote(i) for i in range(n)]) == list(range(n))
print("RESULT", json.dumps({"warm_p50": statistics.median(warm), "map_rate": n / (time.perf_counter() - t)}))
"""

# 1,000,000 spawned calls to `held` (one container, one input a second: the backlog
# only grows); progress every tenth so the harness samples memory and disk there.
MILLION = r"""
import asyncio, os, sys, time
import modal

held = modal.Function.from_name("bench-hot-path", "held")
TOTAL = int(os.environ["BENCH_MILLION"])
STEP = max(TOTAL // 10, 1)

async def other_p50(label):
    other = modal.Function.from_name("bench-hot-path", "other")
    await other.remote.aio(0)  # its container started
    took = []
    for i in range(50):
        began = time.perf_counter()
        await other.remote.aio(i)
        took.append(time.perf_counter() - began)
    print(label, sorted(took)[len(took) // 2], flush=True)

async def main():
    await other_p50("OTHER_IDLE")
    sem = asyncio.Semaphore(64)
    async def one(i):
        async with sem:
            await held.spawn.aio(i)
    started = time.perf_counter()
    for first in range(0, TOTAL, STEP):
        await asyncio.gather(*(one(i) for i in range(first, min(first + STEP, TOTAL))))
        print("PROGRESS", min(first + STEP, TOTAL), time.perf_counter() - started, flush=True)
    await other_p50("OTHER_HELD")

asyncio.run(main())
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def database_mib(data_dir: Path) -> float:
    return sum(path.stat().st_size for path in data_dir.glob("*.db*")) / 2**20


def ray_baseline(map_inputs: int) -> dict[str, float]:
    run = subprocess.run(
        [sys.executable, "-c", RAY], capture_output=True, text=True, timeout=1800,
        # Token auth off: a local ray.init() would otherwise leave ~/.ray/auth_token behind,
        # which turns it on for later `ray start --head` clusters on this machine.
        env={"BENCH_MAP_INPUTS": str(map_inputs), "PATH": os.environ["PATH"], "HOME": str(Path.home()),
             "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(run.stdout[-3000:] + run.stderr[-3000:])
    return dict(json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0]))


def table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)), flush=True)


def report(ours: dict, ray: dict, backlog: int, map_inputs: int) -> None:  # type: ignore[type-arg]
    ms = 1000

    def cpu(figures: list[float]) -> str:
        return " / ".join(f"{value:.2f}" for value in figures)

    print("\nCPU per input, ms (server / client / containers):")
    table(
        [
            ("what", "server / client / containers", ""),
            ("bare gRPC round trip (the floor)", cpu(ours["bare_cpu"]), ""),
            ("warm .remote()", cpu(ours["warm_cpu"]), f"server {ours['warm_cpu'][0] / ours['bare_cpu'][0]:.1f}x a bare RPC"),
            (f".map() of {map_inputs}", cpu(ours["map_cpu"]), f"server {ours['map_cpu'][0] / ours['bare_cpu'][0]:.1f}x a bare RPC"),
        ]
    )  # fmt: skip
    print("\nLatency and rates:")
    table(
        [
            ("figure", "Homeport", "baseline (same run)", "ratio"),
            ("warm .remote() p50", f"{ours['warm_p50'] * ms:.2f} ms", f"{ray['warm_p50'] * ms:.2f} ms (Ray actor call)", f"{ours['warm_p50'] / ray['warm_p50']:.1f}x"),
            ("warm .remote() p99", f"{ours['warm_p99'] * ms:.2f} ms", "", ""),
            (f".map() of {map_inputs}", f"{ours['map_rate']:.0f} /s", f"{ray['map_rate']:.0f} /s (Ray tasks)", f"{ours['map_rate'] / ray['map_rate']:.2f}x"),
            ("Dict put p50", f"{ours['dict_put_p50'] * ms:.2f} ms", f"{ours['bare_p50'] * ms:.2f} ms (bare RPC)", f"{ours['dict_put_p50'] / ours['bare_p50']:.2f}x"),
            ("Dict get p50", f"{ours['dict_get_p50'] * ms:.2f} ms", f"{ours['bare_p50'] * ms:.2f} ms (bare RPC)", f"{ours['dict_get_p50'] / ours['bare_p50']:.2f}x"),
            ("Dict put p50", "", f"{ours['client_rpc_p50'] * ms:.2f} ms (the RPC through the client's path)", f"{ours['dict_put_p50'] / ours['client_rpc_p50']:.2f}x"),
            ("Dict get p50", "", f"{ours['client_rpc_p50'] * ms:.2f} ms (the RPC through the client's path)", f"{ours['dict_get_p50'] / ours['client_rpc_p50']:.2f}x"),
            (f"cold .remote() p50 ({COLD_CALLS} calls)", f"{ours['cold_p50'] * ms:.0f} ms", "", ""),
            (f"enqueue {backlog} .spawn()", f"{ours['enqueue_rate']:.0f} /s", f"client CPU {ours['enqueue_client_cpu']:.2f} ms per spawn", ""),
            ("  drained meanwhile", f"{ours['drained_during'] / ours['enqueue_s']:.0f} /s", "", ""),
            ("  another function's warm .remote() p50", f"{ours['other_busy_p50'] * ms:.2f} ms", f"{ours['other_idle_p50'] * ms:.2f} ms (idle)", f"{ours['other_busy_p50'] / ours['other_idle_p50']:.1f}x"),
            ("  the same, p99", f"{ours['other_busy_p99'] * ms:.2f} ms", "", ""),
        ]
    )  # fmt: skip


def million(server, tmp: Path, total: int) -> None:  # type: ignore[no-untyped-def]
    """Spawn `total` calls that stay queued; sample the server's memory and the database."""
    print(f"\n{total} spawned calls held (server RSS, database size):", flush=True)
    rows = [("queued", "enqueue rate", "server RSS", "database")]
    rows.append(
        ("0", "", f"{rss_mib(server.process.pid):.0f} MiB", f"{database_mib(server.data_dir):.0f} MiB")
    )
    process = subprocess.Popen(
        [sys.executable, "-c", MILLION], cwd=tmp, env=server.env(BENCH_MILLION=str(total)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("PROGRESS"):
            _, done, elapsed = line.split()
            rows.append(
                (done, f"{int(done) / float(elapsed):.0f} /s", f"{rss_mib(server.process.pid):.0f} MiB",
                 f"{database_mib(server.data_dir):.0f} MiB")
            )  # fmt: skip
            print("  ", *rows[-1], flush=True)
        elif line.startswith("OTHER"):
            label, p50 = line.split()
            when = "idle" if label == "OTHER_IDLE" else "with them held"
            print(f"   another function's warm .remote() p50, {when}: {float(p50) * 1000:.1f} ms", flush=True)
        elif "Error" in line or "Traceback" in line:
            print(line, end="")
    if process.wait() != 0:
        raise SystemExit("the spawning client failed")
    table(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--map-inputs", type=int, default=2000)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--million", type=int, default=0, help="also hold this many spawned calls")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument(
        "--million-only",
        action="store_true",
        help="with --million: measure only that",
    )
    args = parser.parse_args()
    if args.million_only and not args.million:
        parser.error("--million-only measures only the held backlog: give its size, e.g. --million 1000000")
    with tempfile.TemporaryDirectory(prefix="homeport-bench-hot-") as temporary:
        tmp = Path(temporary)
        (tmp / "bench_hot_path_app.py").write_text(APP)
        server = start_server(tmp, metrics=True)
        try:
            assert_ok(run_modal(server, "deploy", "bench_hot_path_app.py", cwd=tmp, timeout=900))
            if args.million and args.million_only:
                million(server, tmp, args.million)
                return
            result = run_python(
                server, MEASURE, cwd=tmp, timeout=3600,
                PYTHONPATH=str(REPO), BENCH_SERVER_PID=str(server.process.pid),  # type: ignore[union-attr]
                BENCH_METRICS_URL=f"http://127.0.0.1:{server.metrics_port}/metrics",
                BENCH_MAP_INPUTS=str(args.map_inputs), BENCH_BACKLOG=str(args.backlog), BENCH_COLD_CALLS=str(COLD_CALLS),
            )  # fmt: skip
            ours = json.loads(assert_ok(result).split("RESULT ", 1)[1].splitlines()[0])
            if args.million:
                million(server, tmp, args.million)
        finally:
            server.stop()
    ray = (
        {"warm_p50": float("nan"), "map_rate": float("nan")} if args.no_ray else ray_baseline(args.map_inputs)
    )
    report(ours, ray, args.backlog, args.map_inputs)


if __name__ == "__main__":
    main()

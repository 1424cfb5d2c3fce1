"""Autoscaling and cold starts against Ray (issue 5), run on demand:

    python3 -m venv .venv-ray && .venv-ray/bin/pip install ray==2.60.0   # once
    .venv/bin/python bench/bench_vs_ray.py [--map-inputs N]

Each figure is measured through the real modal client against a server this script
starts, and beside it the same work on Ray (a local `ray.init()` on the same machine, in
the same run), with the ratio (Homeport / Ray; for rates, Ray / Homeport, so > 1 always
means Homeport is slower):
- warm `.remote()` round trip p50/p99 — Ray: a method call on a live actor;
- cold `.remote()` p50 (image built, no container running) — Ray: create an actor, call it;
- `.map()` over trivial inputs, inputs/s — Ray: tasks;
- time from 0 to 32 running containers — Ray: 32 actors answering;
- memory per idle container: the PSS of its processes (pages shared with its zygote or
  other containers count by their share; its cgroup's usage is printed too) — Ray: PSS
  per idle actor process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import assert_ok, run_modal, run_python, start_server

RAY_PYTHON = REPO / ".venv-ray" / "bin" / "python"
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory/homeport")

APP = """
import socket, time, modal
app = modal.App("bench-scaling")

@app.function()
def identity(x):
    return x

@app.function(scaledown_window=2)
def cold(x):
    return x

@app.function(max_containers=32, scaledown_window=2)
def hold(seconds):
    started = time.time()
    time.sleep(seconds)
    return started

@app.function(min_containers=8, scaledown_window=2)
def idle(x):
    return x
"""

HOMEPORT = r"""
import json, os, statistics, sys, time
from pathlib import Path
import modal

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]

map_inputs = int(os.environ["BENCH_MAP_INPUTS"])
identity = modal.Function.from_name("bench-scaling", "identity")
cold = modal.Function.from_name("bench-scaling", "cold")
hold = modal.Function.from_name("bench-scaling", "hold")

identity.remote(0)
warm = []
for i in range(300):
    t = time.perf_counter(); identity.remote(i); warm.append(time.perf_counter() - t)

colds = []
for i in range(5):
    time.sleep(5)  # past scaledown_window=2: no container left
    t = time.perf_counter(); cold.remote(i); colds.append(time.perf_counter() - t)

if os.environ.get("BENCH_COLD_ONLY"):
    print("RESULT", json.dumps({"cold_p50": statistics.median(colds)}))
    sys.exit(0)

t = time.perf_counter()
assert list(identity.map(range(map_inputs))) == list(range(map_inputs))
map_rate = map_inputs / (time.perf_counter() - t)

time.sleep(5)
t0 = time.time()
starts = list(hold.map([8.0] * 32))
fanout_s = max(starts) - t0

print("RESULT", json.dumps({"warm_p50": statistics.median(warm), "warm_p99": pct(warm, 0.99),
      "cold_p50": statistics.median(colds), "map_rate": map_rate, "fanout_s": fanout_s}))
"""

RAY = r"""
import json, os, statistics, time
import ray

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]

ray.init(include_dashboard=False, log_to_driver=False)
map_inputs = int(os.environ["BENCH_MAP_INPUTS"])

@ray.remote(num_cpus=0)
class Echo:
    def call(self, x):
        return x
    def pid(self):
        return os.getpid()

@ray.remote
def identity(x):
    return x

actor = Echo.remote()
ray.get(actor.call.remote(0))
warm = []
for i in range(300):
    t = time.perf_counter(); ray.get(actor.call.remote(i)); warm.append(time.perf_counter() - t)

colds = []
for i in range(5):
    t = time.perf_counter(); fresh = Echo.remote(); ray.get(fresh.call.remote(i)); colds.append(time.perf_counter() - t)
    ray.kill(fresh)

ray.get([identity.remote(i) for i in range(100)])
t = time.perf_counter()
assert ray.get([identity.remote(i) for i in range(map_inputs)]) == list(range(map_inputs))
map_rate = map_inputs / (time.perf_counter() - t)

t = time.perf_counter()
actors = [Echo.remote() for _ in range(32)]
pids = ray.get([a.pid.remote() for a in actors])
fanout_s = time.perf_counter() - t

def pss(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0

idle_bytes = statistics.median(pss(pid) for pid in pids)
print("RESULT", json.dumps({"warm_p50": statistics.median(warm), "warm_p99": pct(warm, 0.99),
      "cold_p50": statistics.median(colds), "map_rate": map_rate, "fanout_s": fanout_s, "idle_bytes": idle_bytes}))
"""


def container_pss(task: str) -> int:
    """Proportional set size of every process in the container (from its memory cgroup)."""
    total = 0
    for pid in (CGROUP_MEMORY / task / "cgroup.procs").read_text().split():
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def idle_container_bytes(server) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The median memory use (PSS, cgroup usage) of the 8 idle min_containers, once all are
    up and have settled (the entrypoint idle, polling for inputs)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tasks = [
            line.split("started container ")[1].split()[0]
            for line in server.log_text().splitlines()
            if "started container" in line and " for idle " in line
        ]
        usage_files = [CGROUP_MEMORY / task / "memory.usage_in_bytes" for task in tasks]
        if sum(path.exists() for path in usage_files) >= 8:
            time.sleep(3)
            live = [task for task, path in zip(tasks, usage_files) if path.exists()]
            return (
                statistics.median(container_pss(task) for task in live),
                statistics.median(
                    int((CGROUP_MEMORY / task / "memory.usage_in_bytes").read_text()) for task in live
                ),
            )
        time.sleep(1)
    return float("nan"), float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--map-inputs", type=int, default=10_000)
    args = parser.parse_args()
    if not RAY_PYTHON.exists():
        raise SystemExit(
            "Ray is not installed: python3 -m venv .venv-ray && .venv-ray/bin/pip install ray==2.60.0"
        )
    with tempfile.TemporaryDirectory(prefix="homeport-bench-ray-") as temporary:
        tmp = Path(temporary)
        (tmp / "bench_scaling.py").write_text(APP)
        server = start_server(tmp)
        try:
            assert_ok(run_modal(server, "deploy", "bench_scaling.py", cwd=tmp, timeout=900))
            idle_bytes, idle_cgroup_bytes = idle_container_bytes(server)
            result = run_python(
                server, HOMEPORT, cwd=tmp, timeout=3600, BENCH_MAP_INPUTS=str(args.map_inputs)
            )
            ours = json.loads(assert_ok(result).split("RESULT ", 1)[1].splitlines()[0])
            ours["idle_bytes"] = idle_bytes
        finally:
            server.stop()
        # The same cold start without zygotes (each container a fresh interpreter): the baseline.
        fresh = start_server(tmp / "fresh", server_env={"HOMEPORT_ZYGOTES": "0"})
        try:
            assert_ok(run_modal(fresh, "deploy", "bench_scaling.py", cwd=tmp, timeout=900))
            result = run_python(
                fresh, HOMEPORT, cwd=tmp, timeout=900, BENCH_MAP_INPUTS="0", BENCH_COLD_ONLY="1"
            )
            ours["cold_fresh_p50"] = json.loads(assert_ok(result).split("RESULT ", 1)[1].splitlines()[0])[
                "cold_p50"
            ]
        finally:
            fresh.stop()
    ray_run = subprocess.run(
        [str(RAY_PYTHON), "-c", RAY], capture_output=True, text=True, timeout=3600,
        env={"BENCH_MAP_INPUTS": str(args.map_inputs), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )  # fmt: skip
    if ray_run.returncode != 0:
        raise SystemExit(ray_run.stdout[-3000:] + ray_run.stderr[-3000:])
    ray = json.loads(ray_run.stdout.split("RESULT ", 1)[1].splitlines()[0])
    ms = 1000
    rows = [
        ("figure", "Homeport", "Ray 2.60.0", "Homeport / Ray"),
        (
            "warm .remote() p50",
            f"{ours['warm_p50'] * ms:.2f} ms",
            f"{ray['warm_p50'] * ms:.2f} ms",
            f"{ours['warm_p50'] / ray['warm_p50']:.1f}",
        ),
        (
            "warm .remote() p99",
            f"{ours['warm_p99'] * ms:.2f} ms",
            f"{ray['warm_p99'] * ms:.2f} ms",
            f"{ours['warm_p99'] / ray['warm_p99']:.1f}",
        ),
        (
            "cold .remote() p50 (Ray: new actor + call)",
            f"{ours['cold_p50'] * ms:.0f} ms",
            f"{ray['cold_p50'] * ms:.0f} ms",
            f"{ours['cold_p50'] / ray['cold_p50']:.1f}",
        ),
        (
            "  the same, fresh interpreter (HOMEPORT_ZYGOTES=0)",
            f"{ours['cold_fresh_p50'] * ms:.0f} ms",
            "",
            "",
        ),
        (
            f".map() over {args.map_inputs} inputs (Ray: tasks)",
            f"{ours['map_rate']:.0f}/s",
            f"{ray['map_rate']:.0f}/s",
            f"{ray['map_rate'] / ours['map_rate']:.1f} (Ray / Homeport)",
        ),
        (
            "0 -> 32 running containers (Ray: 32 actors)",
            f"{ours['fanout_s']:.2f} s",
            f"{ray['fanout_s']:.2f} s",
            f"{ours['fanout_s'] / ray['fanout_s']:.1f}",
        ),
        (
            "memory per idle container, PSS (Ray: idle actor)",
            f"{ours['idle_bytes'] / 2**20:.1f} MiB",
            f"{ray['idle_bytes'] / 2**20:.1f} MiB",
            f"{ours['idle_bytes'] / ray['idle_bytes']:.2f}",
        ),
        ("  the same, its cgroup's usage", f"{idle_cgroup_bytes / 2**20:.1f} MiB", "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()

"""Control-plane benchmark (issue 2), run on demand: `.venv/bin/python bench/bench_control_plane.py`.

Starts its own server and measures, through the real modal client:
- warm `.remote()` round trip, p50 / p99 (a container already running),
- `.map()` throughput over 2,000 trivial inputs,
- `modal run` of a hello world until its result is printed (cold: a new container).
Baseline, measured in the same run: a bare gRPC round trip to the same server
(`EnvironmentGetOrCreate`), so the ratio shows what calling a function costs on top.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import APPS, MODAL, run_python, start_server

MEASURE = r"""
import json, os, statistics, time, asyncio
import modal
from grpclib.client import Channel
from modal_proto import api_grpc, api_pb2
from basics import app, identity

def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]

async def bare_round_trips(n):
    host, port = os.environ["MODAL_SERVER_URL"].removeprefix("http://").split(":")
    channel = Channel(host, int(port))
    stub = api_grpc.ModalClientStub(channel)
    metadata = {
        "x-modal-client-version": modal.__version__,
        "x-modal-token-id": os.environ["MODAL_TOKEN_ID"],
        "x-modal-token-secret": os.environ["MODAL_TOKEN_SECRET"],
    }
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await stub.EnvironmentGetOrCreate(api_pb2.EnvironmentGetOrCreateRequest(), metadata=metadata)
        times.append(time.perf_counter() - t)
    channel.close()
    return times

raw = asyncio.run(bare_round_trips(300))

with app.run():
    identity.remote(1)  # start the container
    warm = []
    for i in range(300):
        t = time.perf_counter()
        identity.remote(i)
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    results = list(identity.map(range(2000)))
    map_s = time.perf_counter() - t
    assert results == list(range(2000))
print("RESULT", json.dumps({
    "raw_p50": statistics.median(raw), "raw_p99": percentile(raw, 0.99),
    "warm_p50": statistics.median(warm), "warm_p99": percentile(warm, 0.99),
    "map_inputs_per_s": 2000 / map_s,
}))
"""


def modal_run_to_first_result(server) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    process = subprocess.Popen(
        [MODAL, "run", "hello.py"],
        cwd=APPS,
        env=server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    elapsed = None
    for line in process.stdout:
        if "Hello, Homeport!" in line and elapsed is None:
            elapsed = time.perf_counter() - started
    process.wait()
    assert elapsed is not None
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = start_server(Path(directory))
        try:
            run_python(server, "pass")  # warm the OS caches for the client's imports
            result = run_python(server, MEASURE, timeout=600)
            line = next((line for line in result.stdout.splitlines() if line.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(result.stdout + result.stderr)
            figures = json.loads(line.removeprefix("RESULT "))
            first_result = statistics.median(modal_run_to_first_result(server) for _ in range(3))
        finally:
            server.stop()
    ms = 1000
    print(f"{'measure':<44}{'value':>12}{'baseline':>12}{'ratio':>8}")
    print(f"{'bare gRPC round trip p50 (baseline)':<44}{figures['raw_p50'] * ms:>10.2f}ms{'':>12}{'':>8}")
    print(
        f"{'warm .remote() p50':<44}{figures['warm_p50'] * ms:>10.2f}ms{figures['raw_p50'] * ms:>10.2f}ms"
        f"{figures['warm_p50'] / figures['raw_p50']:>8.1f}"
    )
    print(
        f"{'warm .remote() p99':<44}{figures['warm_p99'] * ms:>10.2f}ms{figures['raw_p99'] * ms:>10.2f}ms"
        f"{figures['warm_p99'] / figures['raw_p99']:>8.1f}"
    )
    print(f"{'.map() over 2,000 inputs':<44}{figures['map_inputs_per_s']:>8.0f} in/s")
    print(f"{'modal run hello.py to first result (median of 3)':<44}{first_result * ms:>10.0f}ms")


if __name__ == "__main__":
    main()

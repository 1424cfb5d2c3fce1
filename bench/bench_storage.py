"""Storage benchmark (issue 7), run on demand: `.venv/bin/python bench/bench_storage.py`.

Starts its own server and measures through the real modal client, from the client
process and from inside a container:
- Dict put / get p50 (baseline: a bare gRPC round trip to the same server, same run),
- Queue items/s with put_many / get_many (batches of 100),
- Volume write and read MB/s of a 1 GiB file inside a container (baseline: the same
  write and read on the local disk, same run),
- commit time for 1,000 small files.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import run_python, start_server

MEASURE = r"""
import asyncio, json, os, statistics, time
import modal
from grpclib.client import Channel
from modal_proto import api_grpc, api_pb2

def p50(samples):
    return statistics.median(samples)

def dict_latencies(d, n=300):
    puts, gets = [], []
    for i in range(n):
        t = time.perf_counter(); d[f"k{i}"] = i; puts.append(time.perf_counter() - t)
        t = time.perf_counter(); d[f"k{i}"]; gets.append(time.perf_counter() - t)
    return p50(puts), p50(gets)

def queue_rate(q, rounds=4, per_round=5000, batch=100):
    # A partition holds at most 5,000 items (a fuller one makes put wait), so fill and drain in rounds.
    put_s = get_s = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for start in range(0, per_round, batch):
            q.put_many(list(range(batch)))
        put_s += time.perf_counter() - t
        t = time.perf_counter()
        got = 0
        while got < per_round:
            got += len(q.get_many(batch))
        get_s += time.perf_counter() - t
    total = rounds * per_round
    return total / put_s, total / get_s

def disk_rates(directory, size=1024**3):
    block = os.urandom(8 * 1024 * 1024)
    path = os.path.join(directory, "big.bin")
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush(); os.fsync(f.fileno())
    write = size / (time.perf_counter() - t) / 1e6
    os.system("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")
    t = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(8 * 1024 * 1024):
            pass
    read = size / (time.perf_counter() - t) / 1e6
    os.remove(path)
    return write, read

app = modal.App("bench-storage")
vol = modal.Volume.from_name("bench-vol", create_if_missing=True)
bench_dict = modal.Dict.from_name("bench-dict", create_if_missing=True)

@app.function(volumes={"/data": vol}, timeout=900)
def in_container():
    put, get = dict_latencies(bench_dict)
    write, read = disk_rates("/data")
    with open("/data/keep.bin", "wb") as f:
        f.write(os.urandom(1024))
    os.makedirs("/data/small", exist_ok=True)
    for i in range(1000):
        with open(f"/data/small/{i}.txt", "w") as f:
            f.write(str(i))
    t = time.perf_counter(); vol.commit(); commit_s = time.perf_counter() - t
    t = time.perf_counter(); vol.commit(); noop_commit_s = time.perf_counter() - t
    return {"container_dict_put": put, "container_dict_get": get, "volume_write_mbs": write,
            "volume_read_mbs": read, "commit_1000_files_s": commit_s, "commit_unchanged_s": noop_commit_s}

async def bare(n=300):
    host, port = os.environ["MODAL_SERVER_URL"].removeprefix("http://").split(":")
    channel = Channel(host, int(port)); stub = api_grpc.ModalClientStub(channel)
    md = {"x-modal-client-version": modal.__version__, "x-modal-token-id": os.environ["MODAL_TOKEN_ID"],
          "x-modal-token-secret": os.environ["MODAL_TOKEN_SECRET"]}
    out = []
    for _ in range(n):
        t = time.perf_counter(); await stub.EnvironmentGetOrCreate(api_pb2.EnvironmentGetOrCreateRequest(), metadata=md)
        out.append(time.perf_counter() - t)
    channel.close()
    return p50(out)

figures = {"bare_rpc": asyncio.run(bare())}
figures["client_dict_put"], figures["client_dict_get"] = dict_latencies(bench_dict)
q = modal.Queue.from_name("bench-q", create_if_missing=True)
figures["queue_put_per_s"], figures["queue_get_per_s"] = queue_rate(q)
figures["local_write_mbs"], figures["local_read_mbs"] = disk_rates(os.environ["BENCH_TMP"])
with app.run():
    figures.update(in_container.remote())
print("RESULT", json.dumps(figures))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = start_server(Path(directory))
        try:
            result = run_python(server, MEASURE, timeout=1800, BENCH_TMP=directory)
        finally:
            server.stop()
    line = next((line for line in result.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(result.stdout + result.stderr)
    f = json.loads(line.removeprefix("RESULT "))
    ms = 1000
    rows = [
        ("bare gRPC round trip p50 (baseline)", f"{f['bare_rpc'] * ms:.2f} ms", "", ""),
        (
            "Dict put p50, client",
            f"{f['client_dict_put'] * ms:.2f} ms",
            f"{f['bare_rpc'] * ms:.2f} ms",
            f"{f['client_dict_put'] / f['bare_rpc']:.1f}",
        ),
        (
            "Dict get p50, client",
            f"{f['client_dict_get'] * ms:.2f} ms",
            f"{f['bare_rpc'] * ms:.2f} ms",
            f"{f['client_dict_get'] / f['bare_rpc']:.1f}",
        ),
        (
            "Dict put p50, container",
            f"{f['container_dict_put'] * ms:.2f} ms",
            f"{f['bare_rpc'] * ms:.2f} ms",
            f"{f['container_dict_put'] / f['bare_rpc']:.1f}",
        ),
        (
            "Dict get p50, container",
            f"{f['container_dict_get'] * ms:.2f} ms",
            f"{f['bare_rpc'] * ms:.2f} ms",
            f"{f['container_dict_get'] / f['bare_rpc']:.1f}",
        ),
        ("Queue put_many (100/batch)", f"{f['queue_put_per_s']:.0f} items/s", "", ""),
        ("Queue get_many (100/batch)", f"{f['queue_get_per_s']:.0f} items/s", "", ""),
        (
            "Volume write 1 GiB in a container",
            f"{f['volume_write_mbs']:.0f} MB/s",
            f"{f['local_write_mbs']:.0f} MB/s",
            f"{f['volume_write_mbs'] / f['local_write_mbs']:.2f}",
        ),
        (
            "Volume read 1 GiB in a container",
            f"{f['volume_read_mbs']:.0f} MB/s",
            f"{f['local_read_mbs']:.0f} MB/s",
            f"{f['volume_read_mbs'] / f['local_read_mbs']:.2f}",
        ),
        ("commit of 1,000 new small files", f"{f['commit_1000_files_s'] * ms:.0f} ms", "", ""),
        ("commit with nothing changed", f"{f['commit_unchanged_s'] * ms:.0f} ms", "", ""),
    ]
    print(f"{'measure':<48}{'value':>16}{'baseline':>14}{'ratio':>8}")
    for name, value, baseline, ratio in rows:
        print(f"{name:<48}{value:>16}{baseline:>14}{ratio:>8}")


if __name__ == "__main__":
    main()

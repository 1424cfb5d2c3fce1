"""Web gateway benchmark (issue 6), run on demand: `.venv/bin/python bench/bench_web.py`.

A trivial JSON endpoint (`fastapi_endpoint`) served through Homeport's gateway, against
the same FastAPI app served directly by uvicorn, measured in the same run by the same
aiohttp load generator (16 concurrent connections, 10 s each). Also: time to first byte
on a cold endpoint (no container running), and CPU per request: the server process, the
containers (their cgroups' `cpuacct.usage`) and uvicorn's process, each read around its
load.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cpu import containers_cpu, process_cpu
from tests.conftest import VENV_BIN, run_modal, start_server

APP = """
import modal
app = modal.App("bench-web", image=modal.Image.debian_slim().pip_install("fastapi[standard]"))

@app.function()
@modal.concurrent(max_inputs=32)
@modal.fastapi_endpoint()
def ping():
    return {"pong": True}
"""

DIRECT = """
from fastapi import FastAPI
app = FastAPI()

@app.get("/")
def ping():
    return {"pong": True}
"""


LOAD_S = 10.0  # each load, 16 connections


async def load(
    url: str, host: str | None, seconds: float = LOAD_S, concurrency: int = 16
) -> tuple[float, float, float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    headers = {"Host": host} if host else {}

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
                assert response.status == 200
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    latencies.sort()
    return len(latencies) / seconds, statistics.median(latencies), latencies[int(0.99 * len(latencies))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "bench_web_app.py").write_text(APP)
        (root / "direct_app.py").write_text(DIRECT)
        server = start_server(root)
        try:
            assert_deployed = run_modal(server, "deploy", str(root / "bench_web_app.py"), cwd=root)
            assert assert_deployed.returncode == 0, assert_deployed.stdout + assert_deployed.stderr
            port = server.port + 1
            host = f"main--bench-web-ping.localhost:{port}"
            started = time.perf_counter()
            asyncio.run(load(f"http://127.0.0.1:{port}/", host, seconds=0.001, concurrency=1))
            cold_ttfb = time.perf_counter() - started
            before = process_cpu(server.process.pid), containers_cpu()  # type: ignore[union-attr]
            gateway = asyncio.run(load(f"http://127.0.0.1:{port}/", host))
            requests = gateway[0] * LOAD_S
            gateway_cpu = (
                (process_cpu(server.process.pid) - before[0]) / requests,  # type: ignore[union-attr]
                (containers_cpu() - before[1]) / requests,
            )
        finally:
            server.stop()
        direct_port = free_port()
        uvicorn = subprocess.Popen(
            [
                str(VENV_BIN / "uvicorn"),
                "direct_app:app",
                "--port",
                str(direct_port),
                "--log-level",
                "warning",
            ],
            cwd=root,
        )
        try:
            time.sleep(2)
            before_direct = process_cpu(uvicorn.pid)
            direct = asyncio.run(load(f"http://127.0.0.1:{direct_port}/", None))
            direct_cpu = (process_cpu(uvicorn.pid) - before_direct) / (direct[0] * LOAD_S)
        finally:
            uvicorn.terminate()
            uvicorn.wait()
    ms = 1000
    print(f"{'measure':<40}{'gateway':>12}{'uvicorn':>12}{'ratio':>8}")
    print(
        f"{'requests/s (16 connections)':<40}{gateway[0]:>12.0f}{direct[0]:>12.0f}{gateway[0] / direct[0]:>8.2f}"
    )
    print(
        f"{'p50 latency':<40}{gateway[1] * ms:>10.1f}ms{direct[1] * ms:>10.1f}ms{gateway[1] / direct[1]:>8.1f}"
    )
    print(
        f"{'p99 latency':<40}{gateway[2] * ms:>10.1f}ms{direct[2] * ms:>10.1f}ms{gateway[2] / direct[2]:>8.1f}"
    )
    print(f"{'time to first byte, cold endpoint':<40}{cold_ttfb * ms:>10.0f}ms")
    print(
        f"CPU per request: server {gateway_cpu[0] * ms:.2f} ms + containers {gateway_cpu[1] * ms:.2f} ms "
        f"through the gateway; uvicorn's process {direct_cpu * ms:.2f} ms"
    )


if __name__ == "__main__":
    main()

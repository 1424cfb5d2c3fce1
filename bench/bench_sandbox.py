"""Sandbox start overhead (issue 4), run on demand: `.venv/bin/python bench/bench_sandbox.py [N]`.

Starts N containers (default 100) one after another through the runtime the server uses,
each running `/bin/true` instead of the client's entrypoint, so the figure is the sandbox
alone: work directory, mounts layer, cgroup (created and joined), private mount namespace
with the overlay root filesystem (the cached `python:3.11-slim-bookworm` base), bubblewrap's
PID/IPC/UTS namespaces, seccomp filter, exec, exit, clean-up; then the same with the
container's own network namespace (veth pair on the node's bridge). Baseline in the same run:
fork + exec of `/bin/true` on the host. Also the gVisor runtime (runsc) when installed.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from homeport.agent.network import BridgeNetwork
from homeport.agent.runtime import ContainerSpec
from homeport.agent.sandbox import SandboxRuntime
from homeport.config import DEFAULT_CACHE_DIR
from homeport.images.bases import BaseCache

PKG = Path("/nonexistent")


async def start_and_wait(runtime, spec: ContainerSpec) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    output: list[str] = []
    container = await runtime.start(spec, lambda fd, text: output.append(text))
    code = await container.wait()
    elapsed = time.perf_counter() - started
    assert code == 0, f"the container exited with {code}: {''.join(output)[-2000:]}"
    return elapsed


async def measure(runtime, layers: list[Path], work: Path, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    for index in range(n):
        spec = ContainerSpec(
            task_id=f"ta-BENCH{index:020d}",
            app_id="ap-bench",
            function_id="fu-bench",
            container_arguments=b"",
            environment={"PATH": "/usr/local/bin:/usr/bin:/bin"},
            files=[],
            client_package_dir=PKG,
            work_dir=work / f"task-{index}",
            image_layers=layers,
            memory_mib=512,
            cpu_cores=1.0,
            command=("/bin/true",),
        )
        samples.append(await start_and_wait(runtime, spec))
    return samples


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    base = BaseCache(DEFAULT_CACHE_DIR / "bases").ensure(
        "python:3.11-slim-bookworm", lambda text: print(text, end="")
    )
    with tempfile.TemporaryDirectory(prefix="homeport-bench-sandbox-") as temporary:
        work = Path(temporary)
        global PKG
        PKG = work / "pkg"
        PKG.mkdir()
        plain = []
        for _ in range(n):
            started = time.perf_counter()
            subprocess.run(["/bin/true"], check=True)
            plain.append(time.perf_counter() - started)
        rows = [("runtime", "p50", "p90", "baseline p50 (fork+exec)", "ratio")]
        network = BridgeNetwork()
        network.setup([])
        runtimes = [
            ("sandbox (bubblewrap)", SandboxRuntime()),
            ("sandbox + own network (veth, bridge)", SandboxRuntime(network)),
        ]
        if shutil.which("runsc"):
            from homeport.agent.gvisor import GvisorRuntime

            runtimes.append(("gVisor (runsc)", GvisorRuntime()))
        for name, runtime in runtimes:
            samples = asyncio.run(
                measure(runtime, [base.rootfs], work / name.split()[0].strip("(") / str(len(rows)), n)
            )
            p50 = statistics.median(samples)
            p90 = statistics.quantiles(samples, n=10)[-1]
            rows.append(
                (
                    name,
                    f"{p50 * 1000:.1f} ms",
                    f"{p90 * 1000:.1f} ms",
                    f"{statistics.median(plain) * 1000:.2f} ms",
                    f"{p50 / statistics.median(plain):.0f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        print(f"{n} starts each, base {base.tag} ({base.source})")
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()

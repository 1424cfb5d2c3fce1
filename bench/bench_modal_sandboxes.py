"""modal.Sandbox through the real client, run on demand: `.venv/bin/python bench/bench_modal_sandboxes.py`.

One `homeport serve` on this machine, one client process, all in one run:
1. `Sandbox.create("echo", ...)` to the first byte of its stdout (cached image): p50/p99,
   back to back and half a second apart, with sandboxes started ahead (the default) against
   the same server without (HOMEPORT_SANDBOX_POOL=0), both in this run; and against the
   same client's warm `.remote()` of a trivial function.
2. Sandboxes created per second, one after another, then from 4 threads at once, with the
   machine's, the server's and the client's CPU per create and terminate.
3. `sb.exec("true")` start to exit code on a running sandbox: p50/p99. Baseline:
   fork + exec of `/bin/true` on the host (`subprocess.run`).
4. Memory per idle sandbox (`sleep infinity`): the drop of MemAvailable over 50 of them.
Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import run_python, start_server

CLIENT = r"""
import json, statistics, subprocess, time, modal
from basics import app as functions_app, identity

def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]

def mem_available_kib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])

app = modal.App.lookup("bench-sandboxes", create_if_missing=True)
modal.Sandbox.create("true", app=app).wait(raise_on_termination=False)  # the image, warm

with functions_app.run():
    identity.remote(0)
    remote = []
    for i in range(50):
        t = time.perf_counter(); identity.remote(i); remote.append(time.perf_counter() - t)

first_byte = []
for i in range(30):
    t = time.perf_counter()
    sb = modal.Sandbox.create("echo", "hi", app=app)
    next(iter(sb.stdout))
    first_byte.append(time.perf_counter() - t)
    sb.wait(raise_on_termination=False)

spaced = []  # creates half a second apart: an agent starting a sandbox per task
for i in range(20):
    time.sleep(0.5)
    t = time.perf_counter()
    sb = modal.Sandbox.create("echo", "hi", app=app)
    next(iter(sb.stdout))
    spaced.append(time.perf_counter() - t)
    sb.wait(raise_on_termination=False)

t = time.perf_counter()
made = [modal.Sandbox.create("sleep", "infinity", app=app) for _ in range(30)]
creates_per_s = len(made) / (time.perf_counter() - t)
for sb in made:
    sb.terminate()

# Several creators at once (agents serving many users): 60 creates from 4 threads, each
# sandbox terminated at once; where the machine's CPU went, per create and terminate.
import concurrent.futures, os, resource

def machine_cpu_s():
    fields = open("/proc/stat").readline().split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6)) / os.sysconf("SC_CLK_TCK")

def server_cpu_s():
    fields = open(f"/proc/{os.environ['SERVER_PID']}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def client_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

cpu0 = (machine_cpu_s(), server_cpu_s(), client_cpu_s())
t = time.perf_counter()
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(lambda _: modal.Sandbox.create("sleep", "infinity", app=app).terminate(), range(60)))
concurrent_creates_per_s = 60 / (time.perf_counter() - t)
time.sleep(1)  # the last ones' ends
machine, server, client = (
    (after - before) / 60 * 1000 for after, before in zip((machine_cpu_s(), server_cpu_s(), client_cpu_s()), cpu0)
)

sb = modal.Sandbox.create("sleep", "infinity", app=app)
sb.exec("true").wait()
execs = []
for _ in range(50):
    t = time.perf_counter(); sb.exec("true").wait(); execs.append(time.perf_counter() - t)
host = []
for _ in range(50):
    t = time.perf_counter(); subprocess.run(["/bin/true"]); host.append(time.perf_counter() - t)
sb.terminate()

time.sleep(2)
before = mem_available_kib()
idle = [modal.Sandbox.create("sleep", "infinity", app=app) for _ in range(50)]
time.sleep(3)
after = mem_available_kib()
for sb in idle:
    sb.terminate()

print("RESULT", json.dumps({
    "create_first_byte_p50_ms": statistics.median(first_byte) * 1000,
    "create_first_byte_p99_ms": percentile(first_byte, 0.99) * 1000,
    "create_spaced_p50_ms": statistics.median(spaced) * 1000,
    "create_spaced_p99_ms": percentile(spaced, 0.99) * 1000,
    "warm_remote_p50_ms": statistics.median(remote) * 1000,
    "creates_per_s": creates_per_s,
    "concurrent_creates_per_s": concurrent_creates_per_s,
    "cpu_ms_per_create": {"machine": machine, "server": server, "client": client},
    "exec_p50_ms": statistics.median(execs) * 1000,
    "exec_p99_ms": percentile(execs, 0.99) * 1000,
    "host_fork_exec_p50_ms": statistics.median(host) * 1000,
    "idle_sandbox_mib": (before - after) / 1024 / len(idle),
    "mem_available_gib": before / 2**20,
}))
"""


def measure(pool: int) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="homeport-bench-modal-sandboxes-"))
    server = start_server(directory, server_env={"HOMEPORT_SANDBOX_POOL": str(pool)})
    try:
        assert server.process is not None
        done = run_python(server, CLIENT, timeout=1800, SERVER_PID=str(server.process.pid))
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        return dict(json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0]))
    finally:
        server.stop()


def main() -> None:
    # Baseline: the same server with no sandboxes started ahead (HOMEPORT_SANDBOX_POOL=0).
    afresh = measure(0)
    figures = measure(2)
    print(json.dumps({"afresh": afresh, "pool": figures}, indent=2))
    for label, key in (("back to back", "create_first_byte"), ("0.5 s apart", "create_spaced")):
        print(f"create -> first stdout byte, {label}: p50 {figures[key + '_p50_ms']:.1f} ms "
              f"(p99 {figures[key + '_p99_ms']:.1f}) with 2 started ahead, against "
              f"{afresh[key + '_p50_ms']:.1f} ms (p99 {afresh[key + '_p99_ms']:.1f}) afresh: "
              f"{figures[key + '_p50_ms'] / afresh[key + '_p50_ms']:.2f}x; "
              f"{figures[key + '_p50_ms'] / figures['warm_remote_p50_ms']:.2f}x a warm .remote() "
              f"({figures['warm_remote_p50_ms']:.1f} ms)")  # fmt: skip
    print(f"creates afresh: {afresh['creates_per_s']:.1f}/s sustained")
    print(f"creates with 2 started ahead: {figures['creates_per_s']:.1f}/s sustained")
    print(f"creates from 4 threads at once: {figures['concurrent_creates_per_s']:.1f}/s "
          f"(afresh: {afresh['concurrent_creates_per_s']:.1f}/s)")  # fmt: skip
    cpu = figures["cpu_ms_per_create"]
    print(f"CPU per create and terminate: the machine {cpu['machine']:.0f} ms, of which the server "
          f"{cpu['server']:.0f} ms, the client {cpu['client']:.0f} ms, the containers and the kernel the rest")  # fmt: skip
    print(f"exec round trip p50 {figures['exec_p50_ms']:.1f} ms (p99 {figures['exec_p99_ms']:.1f}); "
          f"{figures['exec_p50_ms'] / figures['host_fork_exec_p50_ms']:.1f}x a host fork+exec "
          f"({figures['host_fork_exec_p50_ms']:.2f} ms)")  # fmt: skip
    per = figures["idle_sandbox_mib"]
    print(f"idle sandbox: {per:.1f} MiB each; this machine's {figures['mem_available_gib']:.1f} GiB available "
          f"would hold about {figures['mem_available_gib'] * 1024 / max(per, 0.1):.0f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Memory snapshots through the real client, run on demand: `.venv/bin/python bench/bench_memory_snapshots.py`.

One `homeport serve` on this machine, one deployed app (tests/e2e/apps/snapshot_app.py)
whose class has a snap=True hook that takes 3 s (a model load), all in one run:
1. Cold `.remote()` (the class scaled to zero between calls, image cached) of the same
   class without a snapshot (PlainModel, the baseline: its @enter hook runs every start).
2. The first cold call of Model (enable_memory_snapshot=True): the hook runs, the snapshot
   is taken after it.
3. Cold calls restored from the snapshot: p50/p99 and the node's own restore time (from
   the server log).
4. The same after a server restart; disk per snapshot.
Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import APPS, Server, run_modal, run_python, start_server

SCALED_DOWN_S = 5.0  # scaledown_window=2, then the container's exit
CLIENT = r"""
import json, time, modal
cls = modal.Cls.from_name("snapshot-app", CLASS)
instance = cls()
instance.info.remote()  # warm the handle; this first call is a cold start of its own
times = []
for _ in range(COUNT):
    time.sleep(SCALED_DOWN_S)
    t = time.perf_counter()
    instance.info.remote()
    times.append((time.perf_counter() - t) * 1000)
print("RESULT", json.dumps(times))
"""


def cold_calls(server: Server, cls: str, count: int) -> list[float]:
    script = CLIENT.replace("CLASS", repr(cls)).replace("COUNT", str(count))
    script = script.replace("SCALED_DOWN_S", str(SCALED_DOWN_S))
    done = run_python(server, script, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return list(json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0]))


def first_call_ms(server: Server, cls: str) -> float:
    script = (
        "import time, modal\ninstance = modal.Cls.from_name('snapshot-app', CLASS)()\n"
        "t = time.perf_counter(); instance.info.remote(); print('RESULT', (time.perf_counter() - t) * 1000)\n"
    ).replace("CLASS", repr(cls))
    done = run_python(server, script, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return float(done.stdout.split("RESULT ", 1)[1].split()[0])


def restore_ms(log: str) -> list[float]:
    return [float(m) for m in re.findall(r"restored from memory snapshot \w+ \((\d+) ms", log)]


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="homeport-bench-snapshots-"))
    server = start_server(directory)
    try:
        deployed = run_modal(server, "deploy", "snapshot_app.py", cwd=APPS, timeout=900)
        assert deployed.returncode == 0, (deployed.stdout + deployed.stderr)[-3000:]
        plain = cold_calls(server, "PlainModel", 5)
        first = first_call_ms(server, "Model")
        restored = cold_calls(server, "Model", 15)
        node_restore = restore_ms(server.log_text())
        taken = re.findall(r"memory snapshot taken of \S+ \S+ \((\d+) ms, (\d+) MiB\)", server.log_text())
        server.stop()
        server.start()
        after_restart = cold_calls(server, "Model", 5)
        snapshots = directory / "data" / "memory-snapshots"
        sizes = [
            int(subprocess.run(["du", "-sb", str(d)], capture_output=True, text=True).stdout.split()[0])
            for d in snapshots.iterdir()
            if not d.name.startswith(".")
        ]
    finally:
        server.stop()
    figures = {
        "plain_cold_p50_ms": statistics.median(plain),
        "first_call_with_snapshot_taken_ms": first,
        "snapshot_taken_ms": float(taken[0][0]) if taken else None,
        "restored_cold_p50_ms": statistics.median(restored),
        "restored_cold_p99_ms": p(restored, 0.99),
        "node_restore_p50_ms": statistics.median(node_restore) if node_restore else None,
        "after_restart_cold_p50_ms": statistics.median(after_restart),
        "snapshot_disk_mib": [round(size / 2**20, 1) for size in sizes],
    }
    print(json.dumps(figures, indent=2))
    print(
        f"restored cold start vs no snapshot (p50): {figures['restored_cold_p50_ms'] / figures['plain_cold_p50_ms']:.3f}x"
    )


if __name__ == "__main__":
    main()

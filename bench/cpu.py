"""CPU used so far, for the benchmarks' per-input figures (read before and after a load)."""

from __future__ import annotations

import os
from pathlib import Path

CPUACCT = Path("/sys/fs/cgroup/cpuacct/homeport")  # every Homeport container's cgroup
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User and system seconds of process `pid` (the server, uvicorn), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def containers_cpu() -> float:
    """Seconds used by the containers running now, from their cgroups' cpuacct.usage."""
    total = 0
    for path in CPUACCT.glob("*/cpuacct.usage"):
        try:
            total += int(path.read_text())
        except (OSError, ValueError):
            pass  # a container that ended meanwhile
    return total / 1e9

"""Resource limits per container with cgroup v1 (memory, cpu, pids): the layout of
this machine (cgroup v2 is mounted only as a hybrid). Each container gets
`<controller>/homeport/<task id>`; the container's first process joins them before it
execs, so nothing it starts escapes the limits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Container
from pathlib import Path

log = logging.getLogger("homeport.cgroups")

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cpuacct: CPU time used, for usage records (on some machines it shares cpu's hierarchy).
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
CPU_PERIOD_US = 100_000
DEFAULT_PIDS = 4096  # a fork bomb stops here, not at the node's limit
# A cgroup no process is in, this old, is a leftover (see sweep_stale).
STALE_AGE_S = 60.0


@dataclasses.dataclass(frozen=True)
class Limits:
    memory_mib: int = 0  # 0: no limit
    cpu_cores: float = 0.0  # 0: no quota
    pids: int = DEFAULT_PIDS


def available() -> bool:
    return all(os.access(CGROUP_ROOT / controller, os.W_OK) for controller in CONTROLLERS)


class Cgroup:
    def __init__(self, task_id: str, limits: Limits) -> None:
        self.limits = limits
        self.paths = {
            controller: CGROUP_ROOT / controller / "homeport" / task_id for controller in CONTROLLERS
        }

    def create(self) -> None:
        for path in self.paths.values():
            path.mkdir(parents=True, exist_ok=True)
        self._write_limits()

    def _write_limits(self) -> None:
        if self.limits.memory_mib:
            limit = str(self.limits.memory_mib * 1024 * 1024)
            (self.paths["memory"] / "memory.limit_in_bytes").write_text(limit)
            swap = self.paths["memory"] / "memory.memsw.limit_in_bytes"
            if swap.exists():  # no escaping the limit into swap
                swap.write_text(limit)
        if self.limits.cpu_cores:
            (self.paths["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self.paths["cpu"] / "cpu.cfs_quota_us").write_text(
                str(max(int(self.limits.cpu_cores * CPU_PERIOD_US), 1000))
            )
        (self.paths["pids"] / "pids.max").write_text(str(self.limits.pids))

    def join(self) -> None:
        """Move the calling process in (run in the child between fork and exec)."""
        for path in self.paths.values():
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def add(self, *pids: int) -> None:
        """Move other processes in (a zygote's child and its entrypoint, before either
        runs anything of the container's)."""
        for path in self.paths.values():
            for pid in pids:
                (path / "cgroup.procs").write_text(str(pid))

    def take_over(self, joined: Cgroup) -> None:
        """Become `joined`, a cgroup a process joined ahead (a zygote's spare child): its
        directories renamed to ours (not made yet, or made empty by create()), then our
        limits written to them. Moving a process between cgroups waits out an RCU grace
        period (6-16 ms measured here, on the path of a cold start); a rename does not."""
        hierarchies = set()
        for controller, path in self.paths.items():
            hierarchy = os.path.realpath(path.parent)
            if hierarchy in hierarchies:
                continue  # cpu and cpuacct mounted together (one directory, two names)
            hierarchies.add(hierarchy)
            with contextlib.suppress(FileNotFoundError):
                path.rmdir()
            os.rename(joined.paths[controller], path)
        self._write_limits()

    def usage(self) -> tuple[float, int]:
        """(CPU seconds used, peak memory in bytes) so far; zeros where not readable."""
        cpu_seconds, peak = 0.0, 0
        try:
            cpu_seconds = int((self.paths["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            pass
        try:
            peak = int((self.paths["memory"] / "memory.max_usage_in_bytes").read_text())
        except (OSError, ValueError):
            pass
        return cpu_seconds, peak

    def oom_killed(self) -> bool:
        try:
            control = (self.paths["memory"] / "memory.oom_control").read_text()
        except OSError:
            return False
        counts = dict(line.split() for line in control.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0")) > 0

    def remove(self) -> None:
        for path in set(self.paths.values()):
            try:
                path.rmdir()
            except OSError as error:
                log.debug("could not remove %s: %s", path, error)


def sweep_stale(keep: Container[str], min_age_s: float = STALE_AGE_S) -> int:
    """Remove the cgroups under `homeport/` that no process is in, left by servers that
    were killed (a server removes its own as each container ends; thousands piled up on
    a test machine). Spared: `keep` (this node's containers), and young ones: a cgroup
    is made shortly before its first process joins it, possibly by another server on this
    machine. Blocking: run it off the event loop."""
    removed = 0
    now = time.time()
    for controller in CONTROLLERS:
        try:
            entries = list(os.scandir(CGROUP_ROOT / controller / "homeport"))
        except OSError:
            continue
        for entry in entries:
            if entry.name in keep or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                if now - entry.stat().st_mtime < min_age_s:
                    continue
                if Path(entry.path, "cgroup.procs").read_text().strip():
                    continue
                os.rmdir(entry.path)
                removed += 1
            except OSError:
                continue  # in use after all, or gone meanwhile
    return removed

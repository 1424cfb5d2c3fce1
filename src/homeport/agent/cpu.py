"""How busy this node's CPUs are, from /proc/stat: the scheduler holds back scale-out
while they are saturated, since another container would only slow the running ones."""

from __future__ import annotations

import time


def _read() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


class CpuMeter:
    def __init__(self, window_s: float = 0.5) -> None:
        self.window_s = window_s
        self._last = _read()
        self._last_at = time.monotonic()
        self.busy = 0.0  # fraction of all cores busy over the last window

    def sample(self) -> float:
        now = time.monotonic()
        if now - self._last_at >= self.window_s:
            total, idle = _read()
            delta_total = total - self._last[0]
            if delta_total > 0:
                self.busy = 1.0 - (idle - self._last[1]) / delta_total
            self._last, self._last_at = (total, idle), now
        return self.busy

"""What the control plane asks of a running sandbox on its node, whichever machine that is:
how long it has been idle (idle_timeout), the entrypoint's output from an offset and its
stdin (client 1.6.4's V1 stdio, SandboxGetLogs and SandboxStdinWrite, goes through the
main service rather than the command router). Plain values in and out, so the same calls
work in-process and over Ray (agent/ray_agent.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from homeport.agent.sandbox_processes import MAIN, SandboxProcesses

OutputChunks = tuple[list[tuple[int, bytes]], bool]  # (offset, bytes) chunks, and whether the stream ended
MAX_CHUNK_BYTES = 1024 * 1024  # one answer's worth of output (the caller asks again for more)


class SandboxActivity:
    """Router calls on each sandbox: how many are open and when the last one ended. A
    sandbox with calls open or recent is not idle (idle_timeout counts from the last)."""

    def __init__(self, holds: Callable[[str], bool] = lambda task_id: True) -> None:
        self._holds = holds  # whether the node runs this task now: only those are counted
        self._calls: dict[str, list[float]] = {}  # task id -> [open calls, last change]

    def touch(self, task_id: str, change: int) -> None:
        """A router call on this sandbox began (+1) or ended (-1)."""
        calls = self._calls.get(task_id)
        if calls is None:
            if change < 0 or not self._holds(task_id):
                return  # a read after its end, or the end of a call it forgot
            calls = self._calls[task_id] = [0, time.monotonic()]
        calls[0] = max(0, calls[0] + change)
        calls[1] = time.monotonic()

    def idle_s(self, task_id: str) -> float | None:
        """Seconds since the last call on the sandbox ended (0 while one is open); None
        when it has had none (the caller counts from the sandbox's start then)."""
        calls = self._calls.get(task_id)
        if calls is None:
            return None
        return 0.0 if calls[0] > 0 else max(0.0, time.monotonic() - calls[1])

    def forget(self, task_id: str) -> None:
        self._calls.pop(task_id, None)


async def read_output(
    processes: SandboxProcesses | None, fd: int, offset: int, wait_s: float
) -> OutputChunks | None:
    """The entrypoint's output on `fd` from `offset` (or the oldest byte kept): what is
    there now, or waiting up to `wait_s` for some; and whether the stream has ended. None
    when the node no longer knows the sandbox."""
    if processes is None:
        return None
    stream = processes.processes[MAIN].stream(fd)
    reader = stream.read(offset)  # one chunk holds all there is from `offset`
    try:
        async with asyncio.timeout(wait_s):
            start, data = await anext(reader)
        chunks = [(start, data[:MAX_CHUNK_BYTES])]
    except (TimeoutError, StopAsyncIteration):
        chunks = []
    finally:
        await reader.aclose()
    position = chunks[-1][0] + len(chunks[-1][1]) if chunks else max(offset, stream.start)
    return chunks, stream.closed and position >= stream.end


def write_v1_stdin(processes: SandboxProcesses | None, index: int, data: bytes, eof: bool) -> str | None:
    """SandboxStdinWrite: writes are numbered from 1, so a retried one is recognised and
    skipped. None once delivered, else why not (the sandbox has finished)."""
    main = processes.processes[MAIN] if processes is not None else None
    if processes is None or main is None or main.exit_status is not None:
        return "the sandbox has finished; its stdin is closed"
    if index <= processes.v1_stdin_index:
        return None
    try:
        processes.write_stdin(MAIN, main.stdin_offset, data, eof)
    except ConnectionError as error:
        return str(error)
    processes.v1_stdin_index = index
    return None

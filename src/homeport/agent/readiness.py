"""A sandbox's readiness probe (`Sandbox.create(readiness_probe=modal.Probe...)`).

Client 1.6.4 sends the probe with the sandbox's definition (`Probe{tcp_port | exec_command,
interval_ms}`) and later asks the command router `SandboxWaitUntilReady{task_id, timeout}`,
which answers `ready_at` once the probe passed, and DEADLINE_EXCEEDED when `timeout` ran out
(the client raises its TimeoutError then). The probe runs from the sandbox's start, every
`interval_ms`, until it first passes: a TCP probe asks the supervisor whether 127.0.0.1:port
accepts a connection (inside the sandbox's own network namespace, so `block_network=True`
sandboxes are probed too); an exec probe runs its command in the sandbox, passing on exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import time

from homeport.agent.order import ReadinessProbe
from homeport.agent.sandbox_processes import SandboxProcesses

log = logging.getLogger("homeport.sandbox")


class Readiness:
    def __init__(self, probe: ReadinessProbe, processes: SandboxProcesses) -> None:
        self.probe = probe
        self.processes = processes
        self.ready = asyncio.Event()
        self.ready_at = 0.0  # wall-clock seconds, once ready
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        attempt = 0
        while not self.processes.gone.is_set():
            attempt += 1
            try:
                passed = await self._once(attempt)
            except ConnectionError:  # the sandbox stopped meanwhile
                return
            if passed:
                self.ready_at = time.time()
                self.ready.set()
                return
            await asyncio.sleep(max(self.probe.interval_ms, 1) / 1000)

    async def _once(self, attempt: int) -> bool:
        if self.probe.tcp_port:
            return await self.processes.accepts_tcp(self.probe.tcp_port)
        process_id = f"readiness-probe-{attempt}"
        process = self.processes.exec(process_id, list(self.probe.exec_argv), {}, None, "devnull", "devnull")
        try:
            await process.exited.wait()
        finally:
            self.processes.processes.pop(process_id, None)
        return process.exit_status == ("code", 0)

    async def wait(self, timeout_s: float) -> bool:
        """True once ready; False if `timeout_s` passed or the sandbox stopped first."""
        ready = asyncio.ensure_future(self.ready.wait())
        gone = asyncio.ensure_future(self.processes.gone.wait())
        try:
            await asyncio.wait([ready, gone], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            gone.cancel()
        return self.ready.is_set()

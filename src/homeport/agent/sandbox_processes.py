"""The node's side of a sandbox's supervisor (`supervisor.py`): the processes running in one
sandbox, their output kept for reading from any offset, their stdin and exit status.

Output is kept, not streamed through: the client reads a stream whenever it likes (the
filesystem calls read stderr only after the process exited), reconnects at the offset it
got to, and reads stdout and stderr concurrently. Each stream keeps its last
`KEEP_BYTES`; a reader that fell further behind resumes at the oldest byte kept (the V2
entrypoint stream says so with `starting_offset`).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import logging
import os
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homeport.agent.readiness import Readiness

log = logging.getLogger("homeport.sandbox")

KEEP_BYTES = 32 * 1024 * 1024
MAIN = "main"  # the entrypoint's process id
LINE_LIMIT = 64 * 1024 * 1024  # one message per line (see the supervisor)


class OutputStream:
    def __init__(self) -> None:
        self._data = bytearray()
        self.start = 0  # offset of _data[0] in the whole stream
        self.closed = False
        self._changed = asyncio.Event()

    @property
    def end(self) -> int:
        return self.start + len(self._data)

    def append(self, data: bytes) -> None:
        self._data += data
        if len(self._data) > KEEP_BYTES:
            dropped = len(self._data) - KEEP_BYTES
            del self._data[:dropped]
            self.start += dropped
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def read(self, offset: int) -> AsyncGenerator[tuple[int, bytes]]:
        """(starting offset, bytes) chunks from `offset` (or the oldest byte kept) until the
        stream is closed and read to its end. Never yields an empty chunk."""
        while True:
            offset = max(offset, self.start)
            if offset < self.end:
                chunk = bytes(self._data[offset - self.start :])
                yield offset, chunk
                offset += len(chunk)
                continue
            if self.closed:
                return
            await self._changed.wait()


class Process:
    def __init__(self, process_id: str) -> None:
        self.process_id = process_id
        self.stdout = OutputStream()
        self.stderr = OutputStream()
        self.exit_status: tuple[str, int] | None = None  # ("code", N) or ("signal", N)
        self.exited = asyncio.Event()
        self.stdin_offset = 0  # bytes of stdin accepted so far
        self.stdin_closed = False
        # Router streams sending its output now: (fd, offset sent up to) by stream.
        self._readers: dict[object, tuple[int, int]] = {}
        self._asked_for: set[int] = set()  # the fds some stream has ever been opened on
        self._readers_changed = asyncio.Event()

    def reader_at(self, reader: object, fd: int, offset: int | None) -> None:
        """A stream of its output has sent up to `offset` of `fd` (None: it ended)."""
        if offset is None:
            self._readers.pop(reader, None)
        else:
            self._readers[reader] = (fd, offset)
            self._asked_for.add(fd)
        self._readers_changed.set()
        self._readers_changed = asyncio.Event()

    async def output_delivered(self, open_within_s: float, send_within_s: float) -> None:
        """Returns once every open stream of its output has sent all there is, and output no
        stream has asked for yet has waited `open_within_s` for one; never after
        `send_within_s` (a reader that stopped reading does not hold the exit back)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            now = loop.time()
            behind = any(offset < self.stream(fd).end for fd, offset in self._readers.values())
            unasked = any(self.stream(fd).end > 0 and fd not in self._asked_for for fd in (1, 2))
            waiting_for = send_within_s if behind else open_within_s if unasked else 0.0
            if now - started >= waiting_for:
                return
            try:
                async with asyncio.timeout(started + waiting_for - now):
                    await self._readers_changed.wait()
            except TimeoutError:
                return

    def stream(self, fd: int) -> OutputStream:
        return self.stdout if fd == 1 else self.stderr

    def exit_code(self) -> int | None:
        """The shell's convention: a signal N is 128 + N."""
        if self.exit_status is None:
            return None
        kind, value = self.exit_status
        return value if kind == "code" else 128 + value


class SandboxProcesses:
    """One sandbox's processes, through its supervisor's socket."""

    def __init__(
        self, socket_path: Path, on_entrypoint_output: Callable[[int, str], None] | None = None
    ) -> None:
        self.socket_path = socket_path
        # The entrypoint's output also goes to the sandbox's logs (`modal container logs`).
        self.on_entrypoint_output = on_entrypoint_output
        self._decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in (1, 2)}
        self.processes: dict[str, Process] = {MAIN: Process(MAIN)}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.gone = asyncio.Event()  # the supervisor's connection ended (the sandbox stopped)
        self._probes: dict[str, asyncio.Future[bool]] = {}
        self._probe_count = 0
        # Set when the sandbox was created with a readiness_probe (agent/readiness.py).
        self.readiness: Readiness | None = None
        self.v1_stdin_index = 0  # the last V1 SandboxStdinWrite delivered (they count from 1)

    async def connect(self, timeout_s: float = 30.0) -> None:
        """Wait for the supervisor's socket and connect: the entrypoint starts then."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        # A socket's path may hold 107 bytes; a deep data directory is longer. Reach it
        # through a descriptor of its directory instead (/proc/self/fd/N/NAME is short).
        directory = os.open(self.socket_path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            while True:
                try:
                    reader, self._writer = await asyncio.open_unix_connection(
                        f"/proc/self/fd/{directory}/{self.socket_path.name}", limit=LINE_LIMIT
                    )
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if asyncio.get_running_loop().time() > deadline:
                        raise TimeoutError(
                            f"the sandbox's supervisor did not start within {timeout_s:.0f} s"
                        ) from None
                    await asyncio.sleep(0.002)
        finally:
            os.close(directory)
        self._reader_task = asyncio.get_running_loop().create_task(self._read_events(reader))

    async def _read_events(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                event = json.loads(line)
                if event["ev"] == "probe":
                    answer = self._probes.pop(event["id"], None)
                    if answer is not None and not answer.done():
                        answer.set_result(bool(event["ok"]))
                    continue
                process_id = event["id"]
                process = self.processes.get(process_id)
                if process is None:
                    continue
                if event["ev"] == "out":
                    data = base64.b64decode(event["data"])
                    process.stream(event["fd"]).append(data)
                    if process_id == MAIN and self.on_entrypoint_output is not None:
                        self.on_entrypoint_output(event["fd"], self._decoders[event["fd"]].decode(data))
                elif event["ev"] == "exit":
                    self._finish(
                        process, ("signal", event["signal"]) if "signal" in event else ("code", event["code"])
                    )
        except (ConnectionError, ValueError) as error:
            log.warning("sandbox supervisor at %s: %s", self.socket_path, error)
        finally:
            self.gone.set()
            if self._writer is not None:
                self._writer.close()
            for process in self.processes.values():
                if process.exit_status is None:  # the sandbox went with it
                    self._finish(process, ("signal", 9))

    @staticmethod
    def _finish(process: Process, status: tuple[str, int]) -> None:
        process.exit_status = status
        process.stdout.close()
        process.stderr.close()
        process.exited.set()

    def _send(self, message: dict) -> None:  # type: ignore[type-arg]
        if self._writer is None or self._writer.is_closing() or self.gone.is_set():
            raise ConnectionError("the sandbox has stopped")
        self._writer.write(json.dumps(message).encode() + b"\n")

    def exec(
        self,
        process_id: str,
        argv: list[str],
        environment: dict[str, str],
        workdir: str | None,
        stdout: str,
        stderr: str,
        pty: dict[str, object] | None = None,
    ) -> Process:
        """Start a process (once per id: a repeated request is the same process); with
        `pty` (rows, columns, term...) on a pseudo-terminal, all its output on stdout."""
        existing = self.processes.get(process_id)
        if existing is not None:
            return existing
        process = Process(process_id)
        self._send(
            {"op": "exec", "id": process_id, "argv": argv, "env": environment, "cwd": workdir,
             "stdout": stdout, "stderr": stderr, **({"pty": pty} if pty is not None else {})}
        )  # fmt: skip
        self.processes[process_id] = process
        if stdout != "pipe":
            process.stdout.close()
        if stderr != "pipe" or pty is not None:
            process.stderr.close()
        return process

    def start_entrypoint(
        self, argv: list[str], environment: dict[str, str], workdir: str, terminal: dict[str, object] | None
    ) -> None:
        """A supervisor started ahead (`--wait`, see sandbox_pool.py) starts the entrypoint;
        `environment` is the sandbox's, for the entrypoint and every exec after it."""
        self._send(
            {"op": "start", "id": MAIN, "argv": argv, "env": environment, "cwd": workdir,
             **({"pty": terminal} if terminal is not None else {})}
        )  # fmt: skip
        if terminal is not None:
            self.processes[MAIN].stderr.close()

    def write_stdin(self, process_id: str, offset: int, data: bytes, eof: bool) -> None:
        """Idempotent by offset: bytes below what was accepted already are skipped (a retry)."""
        process = self.processes[process_id]
        if process.stdin_closed:
            return
        if offset > process.stdin_offset:
            raise ValueError(
                f"stdin offset {offset} is past the {process.stdin_offset} bytes received; "
                f"send again from offset {process.stdin_offset}"
            )
        new = data[process.stdin_offset - offset :]
        self._send({"op": "stdin", "id": process_id, "data": base64.b64encode(new).decode(), "eof": eof})
        process.stdin_offset += len(new)  # counted once handed to the supervisor
        process.stdin_closed = eof

    async def accepts_tcp(self, port: int) -> bool:
        """Whether something in the sandbox accepts connections on 127.0.0.1:port."""
        self._probe_count += 1
        probe_id = f"probe-{self._probe_count}"
        answer = asyncio.get_running_loop().create_future()
        self._probes[probe_id] = answer
        try:
            self._send({"op": "probe_tcp", "id": probe_id, "port": port})
            gone = asyncio.ensure_future(self.gone.wait())
            try:
                await asyncio.wait([answer, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            return answer.done() and answer.result()
        finally:
            self._probes.pop(probe_id, None)

    def signal(self, process_id: str, signum: int) -> None:
        if self.processes.get(process_id) is not None:
            self._send({"op": "signal", "id": process_id, "signum": signum})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

"""A sandbox's first process: runs its entrypoint and, on the node agent's request, more
processes beside it (`Sandbox.exec`), all inside the sandbox.

It runs inside the container, so whatever it starts inherits the sandbox's isolation as it
is: namespaces, root filesystem, cgroup, seccomp filter, no capabilities. It must run in
any image, including ones without Python, so it is the node's own Python, bound read-only
into the container and started through the node's own dynamic loader (`host_python.py`).
Standard library only.

The agent connects to its Unix socket (a directory bound from the host) and they speak
newline-delimited JSON, binary data base64-encoded. Agent to supervisor:
    {"op": "exec", "id", "argv", "env", "cwd", "stdout": "pipe"|"devnull", "stderr": "pipe"|"devnull"|"stdout"}
    {"op": "stdin", "id", "data", "eof"}        {"op": "signal", "id", "signum"}
Supervisor to agent (for the entrypoint, id "main"):
    {"ev": "out", "id", "fd": 1|2, "data"}      {"ev": "exit", "id", "code"} or {"ev": "exit", "id", "signal"}
A process whose program cannot be started exits 127 with the shell's message on stderr.
The supervisor exits with the entrypoint's status once its output is delivered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys

# Set for the supervisor only (agent/host_python.py): the node's interpreter, as a JSON list.
SANDBOX_PYTHON_VARIABLE = "HOMEPORT_SANDBOX_PYTHON"
OWN_VARIABLES = (SANDBOX_PYTHON_VARIABLE,)
# Client 1.6.4 runs sb.filesystem operations as this program with one JSON argument; it is
# ours, a script run with the node's interpreter (fs_tools.py beside this file).
FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"
READ_CHUNK = 64 * 1024
# One message is one line; a stdin write may carry 16 MiB (client 1.6.4's largest drain).
LINE_LIMIT = 64 * 1024 * 1024


class Supervisor:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.main_status: int | None = None
        self.main_done = asyncio.Event()

    def send(self, event: dict) -> None:  # type: ignore[type-arg]
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(event).encode() + b"\n")

    async def run(self, entrypoint: list[str]) -> int:
        self.server = await asyncio.start_unix_server(self.serve, path=self.socket_path, limit=LINE_LIMIT)
        await self.connected.wait()  # the entrypoint starts once its output has a reader
        await self.start("main", entrypoint, dict(os.environ), None, "pipe", "pipe")
        await self.main_done.wait()
        if self.writer is not None:
            try:
                await self.writer.drain()
            except ConnectionError:
                pass
        return self.main_status or 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.writer is not None:
            writer.close()  # one agent at a time
            return
        self.writer = writer
        self.connected.set()
        while line := await reader.readline():
            await self.handle(json.loads(line))

    async def handle(self, request: dict) -> None:  # type: ignore[type-arg]
        op, process_id = request["op"], request["id"]
        if op == "exec":
            if process_id in self.processes:
                return  # the same exec again (the client retries): started once
            environment = {**_child_environment(os.environ), **request.get("env", {})}
            await self.start(
                process_id,
                request["argv"],
                environment,
                request.get("cwd"),
                request["stdout"],
                request["stderr"],
            )
        elif op == "stdin":
            process = self.processes.get(process_id)
            if process is None or process.stdin is None or process.stdin.is_closing():
                return
            try:
                process.stdin.write(base64.b64decode(request.get("data", "")))
                await process.stdin.drain()
                if request.get("eof"):
                    process.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # it exited or closed its stdin: the bytes have nowhere to go
        elif op == "signal":
            process = self.processes.get(process_id)
            if process is not None and process.returncode is None:
                try:
                    os.killpg(process.pid, int(request["signum"]))
                except ProcessLookupError:
                    pass

    async def start(
        self,
        process_id: str,
        argv: list[str],
        environment: dict[str, str],
        cwd: str | None,
        stdout: str,
        stderr: str,
    ) -> None:
        if argv and argv[0] == FS_TOOLS:
            interpreter = json.loads(os.environ.get(SANDBOX_PYTHON_VARIABLE, "[]"))
            argv = [*interpreter, os.path.join(os.path.dirname(__file__), "fs_tools.py"), *argv[1:]]
        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        error_target = {"pipe": pipe, "devnull": devnull, "stdout": asyncio.subprocess.STDOUT}[stderr]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=pipe,
                stdout=pipe if stdout == "pipe" else devnull,
                stderr=error_target,
                env=_child_environment(environment),
                cwd=cwd or None,
                start_new_session=True,  # its own process group: a signal reaches its children
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as error:
            reason = "command not found" if isinstance(error, FileNotFoundError) else error.strerror
            if cwd and not os.path.isdir(cwd):
                reason = f"working directory {cwd} does not exist"
            message = f"{argv[0] if argv else '(empty command)'}: {reason}\n".encode()
            self.send({"ev": "out", "id": process_id, "fd": 2, "data": base64.b64encode(message).decode()})
            self.finish(process_id, {"code": 127 if isinstance(error, FileNotFoundError) else 126})
            return
        self.processes[process_id] = process
        asyncio.get_running_loop().create_task(self.watch(process_id, process))

    async def watch(self, process_id: str, process: asyncio.subprocess.Process) -> None:
        await asyncio.gather(
            self.pump(process_id, 1, process.stdout), self.pump(process_id, 2, process.stderr)
        )
        code = await process.wait()
        self.finish(process_id, {"signal": -code} if code < 0 else {"code": code})

    def finish(self, process_id: str, status: dict) -> None:  # type: ignore[type-arg]
        self.send({"ev": "exit", "id": process_id, **status})
        if process_id == "main":
            self.main_status = status.get("code", 128 + status.get("signal", 0))
            self.main_done.set()

    async def pump(self, process_id: str, fd: int, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(READ_CHUNK):
            self.send({"ev": "out", "id": process_id, "fd": fd, "data": base64.b64encode(chunk).decode()})


def _child_environment(environment: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {name: value for name, value in environment.items() if name not in OWN_VARIABLES}


def main() -> None:
    socket_path, separator, *entrypoint = sys.argv[1:]
    assert separator == "--" and entrypoint, "usage: supervisor.py SOCKET -- COMMAND [ARGS...]"
    signal.signal(signal.SIGTERM, lambda *_: None)  # terminate() is for the processes, not for us
    loop = asyncio.new_event_loop()
    status = loop.run_until_complete(Supervisor(socket_path).run(entrypoint))
    os._exit(status)  # at once: nothing else to wind down, and the sandbox ends with us


if __name__ == "__main__":
    main()

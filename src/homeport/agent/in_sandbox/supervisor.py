"""A sandbox's first process: runs its entrypoint and, on the node agent's request, more
processes beside it (`Sandbox.exec`), all inside the sandbox.

It runs inside the container, so whatever it starts inherits the sandbox's isolation as it
is: namespaces, root filesystem, cgroup, seccomp filter, no capabilities. It must run in
any image, including ones without Python, so it is the node's own Python, bound read-only
into the container and started through the node's own dynamic loader (`host_python.py`).
Standard library only, and no asyncio: importing it (and through it ssl) costs more than
everything else this process does before the entrypoint starts. One `selectors` loop.

The agent connects to its Unix socket (a directory bound from the host) and they speak
newline-delimited JSON, binary data base64-encoded. Agent to supervisor:
    {"op": "exec", "id", "argv", "env", "cwd", "stdout": "pipe"|"devnull", "stderr": "pipe"|"devnull"|"stdout",
     "pty": {"rows", "columns", "term", ...} (optional: on a pseudo-terminal, all output as fd 1)}
    {"op": "stdin", "id", "data", "eof"}        {"op": "signal", "id", "signum"}
    {"op": "probe_tcp", "id", "port"}            (does 127.0.0.1:port accept a connection?)
    {"op": "start", "id": "main", "argv", "env", "cwd", "pty"?}  (the entrypoint, once)
Supervisor to agent (for the entrypoint, id "main"):
    {"ev": "out", "id", "fd": 1|2, "data"}      {"ev": "exit", "id", "code"} or {"ev": "exit", "id", "signal"}
    {"ev": "probe", "id", "ok"}
A process's exit is sent after all its output. A process whose program cannot be started
exits 127 with the shell's message on stderr. The supervisor exits with the entrypoint's
status once that is delivered. It is told the entrypoint (with the sandbox's environment,
which execs get too) by the agent that connected, so no output is lost; a sandbox started
ahead of its create (agent/sandbox_pool.py) waits for that like any other.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
from typing import IO

# Set for the supervisor only (agent/host_python.py): the node's interpreter, as a JSON list.
SANDBOX_PYTHON_VARIABLE = "HOMEPORT_SANDBOX_PYTHON"
OWN_VARIABLES = (SANDBOX_PYTHON_VARIABLE,)
# Client 1.6.4 runs sb.filesystem operations as this program with one JSON argument; it is
# ours, a script run with the node's interpreter (fs_tools.py beside this file).
FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"
READ_CHUNK = 64 * 1024
MAIN = "main"


class Process:
    def __init__(
        self,
        process_id: str,
        popen: subprocess.Popen[bytes],
        pidfd: int,
        stdin: IO[bytes] | None,
        outputs: list[tuple[int, IO[bytes]]],
        terminal: bool,
    ) -> None:
        self.process_id = process_id
        self.popen = popen
        self.pidfd = pidfd
        self.stdin = stdin
        self.outputs = outputs  # (1 or 2, the stream it writes to)
        self.terminal = terminal  # a pseudo-terminal stands for all three of its streams
        self.open_outputs = len(outputs)
        self.status: dict[str, int] | None = None
        self.stdin_pending = bytearray()
        self.stdin_eof = False
        self.at_line_start = True  # a terminal: whether its input so far ends a line
        self.end_of_input_sent = False


class Supervisor:
    def __init__(self, socket_path: str) -> None:
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_path)
        self.listener.listen(1)
        self.agent: socket.socket | None = None
        self.incoming = bytearray()
        self.outgoing = bytearray()
        self.processes: dict[str, Process] = {}
        self.main_status: int | None = None
        # What the entrypoint and every exec start with: this process's environment, or,
        # for a supervisor started ahead (--wait), that and the sandbox's own from "start".
        self.environment = _child_environment(os.environ)

    # --- the agent's connection ---------------------------------------------------------------

    def send(self, event: dict) -> None:  # type: ignore[type-arg]
        self.outgoing += json.dumps(event).encode() + b"\n"
        self._watch_agent()

    def _watch_agent(self) -> None:
        assert self.agent is not None
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outgoing else 0)
        self.selector.modify(self.agent, events, ("agent", None))

    def _agent_ready(self, mask: int) -> None:
        assert self.agent is not None
        if mask & selectors.EVENT_WRITE and self.outgoing:
            try:
                sent = self.agent.send(self.outgoing)
            except BlockingIOError:
                sent = 0
            del self.outgoing[:sent]
            self._watch_agent()
        if mask & selectors.EVENT_READ:
            try:
                data = self.agent.recv(READ_CHUNK * 4)
            except BlockingIOError:
                return
            if not data:  # the agent went away: the sandbox has no one to serve
                os._exit(self.main_status if self.main_status is not None else 137)
            self.incoming += data
            while (end := self.incoming.find(b"\n")) >= 0:
                line = bytes(self.incoming[:end])
                del self.incoming[: end + 1]
                try:
                    self.handle(json.loads(line))
                except Exception as error:  # one bad request must not end the sandbox
                    sys.stderr.write(f"homeport supervisor: a request failed: {error!r}\n")

    def handle(self, request: dict) -> None:  # type: ignore[type-arg]
        op, process_id = request["op"], request["id"]
        process = self.processes.get(process_id)
        if op == "start" and MAIN not in self.processes:  # the entrypoint, once
            self.environment.update(request.get("env", {}))
            cwd = request.get("cwd") or "/"
            try:
                os.makedirs(cwd, exist_ok=True)
                os.chdir(cwd)  # execs without a workdir start here too
            except OSError:
                pass  # the entrypoint's start then says what is wrong with it
            self.start(MAIN, request["argv"], dict(self.environment), cwd, "pipe", "pipe", request.get("pty"))
        elif op == "exec":
            if process is None:  # the same exec again (the client retries): started once
                environment = {**self.environment, **request.get("env", {})}
                self.start(
                    process_id,
                    request["argv"],
                    environment,
                    request.get("cwd"),
                    request["stdout"],
                    request["stderr"],
                    request.get("pty"),
                )
        elif (
            op == "stdin"
            and process is not None
            and process.status is None  # it exited: its stdin is closed
            and not process.stdin_eof
        ):
            process.stdin_pending += base64.b64decode(request.get("data", ""))
            process.stdin_eof = bool(request.get("eof"))
            self._flush_stdin(process)
        elif op == "probe_tcp":
            self._probe(process_id, int(request["port"]))
        elif op == "signal" and process is not None and process.status is None:
            try:
                os.killpg(process.popen.pid, int(request["signum"]))
            except ProcessLookupError:
                pass

    # --- processes ----------------------------------------------------------------------------

    def start(
        self,
        process_id: str,
        argv: list[str],
        environment: dict[str, str],
        cwd: str | None,
        stdout: str,
        stderr: str,
        pty: dict | None = None,  # type: ignore[type-arg]
    ) -> None:
        if argv and argv[0] == FS_TOOLS:
            interpreter = json.loads(os.environ.get(SANDBOX_PYTHON_VARIABLE, "[]"))
            argv = [*interpreter, os.path.join(os.path.dirname(__file__), "fs_tools.py"), *argv[1:]]
        pipe, devnull = subprocess.PIPE, subprocess.DEVNULL
        terminal = None
        try:
            if pty is not None:
                terminal = _open_terminal(pty)
                popen = subprocess.Popen(
                    argv,
                    stdin=terminal[1],
                    stdout=terminal[1],
                    stderr=terminal[1],
                    env=_child_environment({**environment, **_terminal_environment(pty)}),
                    cwd=cwd or None,
                    start_new_session=True,
                    preexec_fn=_take_controlling_terminal,
                )
            else:
                popen = subprocess.Popen(
                    argv,
                    stdin=pipe,
                    stdout=pipe if stdout == "pipe" else devnull,
                    stderr={"pipe": pipe, "devnull": devnull, "stdout": subprocess.STDOUT}[stderr],
                    env=_child_environment(environment),
                    cwd=cwd or None,
                    start_new_session=True,  # its own process group: a signal reaches its children
                )
        except (OSError, ValueError, struct.error) as error:  # not found, not executable, a bad argument...
            if terminal is not None:
                os.close(terminal[0])
                os.close(terminal[1])
            reason = (
                "command not found"
                if isinstance(error, FileNotFoundError)
                else str(getattr(error, "strerror", None) or error)
            )
            if cwd and not os.path.isdir(cwd):
                reason = f"working directory {cwd} does not exist"
            message = f"{argv[0] if argv else '(empty command)'}: {reason}\n".encode()
            self.send({"ev": "out", "id": process_id, "fd": 2, "data": base64.b64encode(message).decode()})
            self.finish(process_id, {"code": 127 if isinstance(error, FileNotFoundError) else 126})
            return
        if terminal is not None:
            leader, follower = terminal
            os.close(follower)  # the process holds it now; the leader reads EIO once it is gone
            stdin: IO[bytes] | None = os.fdopen(os.dup(leader), "wb", buffering=0)
            outputs: list[tuple[int, IO[bytes]]] = [(1, os.fdopen(leader, "rb", buffering=0))]
        else:
            stdin = popen.stdin
            outputs = [
                (fd, stream) for fd, stream in ((1, popen.stdout), (2, popen.stderr)) if stream is not None
            ]
        process = Process(process_id, popen, os.pidfd_open(popen.pid), stdin, outputs, terminal is not None)
        self.processes[process_id] = process
        for fd, stream in outputs:
            os.set_blocking(stream.fileno(), False)
            self.selector.register(stream, selectors.EVENT_READ, ("output", (process, fd)))
        if stdin is not None:
            os.set_blocking(stdin.fileno(), False)
        self.selector.register(process.pidfd, selectors.EVENT_READ, ("exited", process))

    def _output_ready(self, stream, process: Process, fd: int) -> None:  # type: ignore[no-untyped-def]
        if stream.closed:  # drained and closed at its exit, earlier in this round
            return
        try:
            chunk = os.read(stream.fileno(), READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: a pseudo-terminal whose process (and its children) closed it
            chunk = b""
        if chunk:
            self.send(
                {"ev": "out", "id": process.process_id, "fd": fd, "data": base64.b64encode(chunk).decode()}
            )
            return
        self.selector.unregister(stream)
        stream.close()
        process.open_outputs -= 1
        self._maybe_finished(process)

    def _exited(self, process: Process) -> None:
        self.selector.unregister(process.pidfd)
        os.close(process.pidfd)
        code = process.popen.wait()
        process.status = {"signal": -code} if code < 0 else {"code": code}
        self._close_stdin(process)
        # What it wrote is in its pipes now: send that, then its exit. A child it left in
        # the background may hold the pipes open; its later output is not the process's.
        for fd, stream in process.outputs:
            if not stream.closed:
                while True:
                    try:
                        chunk = os.read(stream.fileno(), READ_CHUNK)
                    except OSError:  # BlockingIOError: nothing more now; EIO: a closed terminal
                        break
                    if not chunk:
                        break
                    encoded = base64.b64encode(chunk).decode()
                    self.send({"ev": "out", "id": process.process_id, "fd": fd, "data": encoded})
                self.selector.unregister(stream)
                stream.close()
        process.open_outputs = 0
        self._maybe_finished(process)

    def _maybe_finished(self, process: Process) -> None:
        # All output first: a process that exited may still have bytes in its pipes.
        if process.status is not None and process.open_outputs == 0:
            self.finish(process.process_id, process.status)

    def finish(self, process_id: str, status: dict[str, int]) -> None:
        self.send({"ev": "exit", "id": process_id, **status})
        if process_id == MAIN:
            self.main_status = status.get("code", 128 + status.get("signal", 0))

    def _flush_stdin(self, process: Process) -> None:
        stdin = process.stdin
        assert stdin is not None
        if process.terminal and process.stdin_pending:
            process.at_line_start = process.stdin_pending.endswith(b"\n")
        if process.stdin_eof and process.terminal and not process.end_of_input_sent:
            # A terminal's end of input is ^D, not a closed descriptor; in mid-line the first
            # ^D only hands over the line, and a second one ends the input.
            process.stdin_pending += b"\x04" if process.at_line_start else b"\x04\x04"
            process.end_of_input_sent = True
        if process.stdin_pending:
            try:
                written = os.write(stdin.fileno(), process.stdin_pending)
                del process.stdin_pending[:written]
            except BlockingIOError:
                pass
            except (BrokenPipeError, ValueError):  # it closed its stdin or exited
                process.stdin_pending.clear()
        if process.stdin_pending:
            if not self._registered(stdin):
                self.selector.register(stdin, selectors.EVENT_WRITE, ("stdin", process))
        else:
            if self._registered(stdin):
                self.selector.unregister(stdin)
            if process.stdin_eof and not process.terminal:  # a terminal's input ended with ^D;
                self._close_stdin(process)  # its leader stays open until the process exits

    def _registered(self, stream) -> bool:  # type: ignore[no-untyped-def]
        try:
            self.selector.get_key(stream)
        except (KeyError, ValueError):  # ValueError: a closed file
            return False
        return True

    def _close_stdin(self, process: Process) -> None:
        stdin = process.stdin
        if stdin is None or stdin.closed:
            return
        if self._registered(stdin):
            self.selector.unregister(stdin)
        try:
            stdin.close()
        except BrokenPipeError:
            pass

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        self.agent, _ = self.listener.accept()  # the entrypoint comes from it ("start")
        self.agent.setblocking(False)
        self.selector.register(self.agent, selectors.EVENT_READ, ("agent", None))
        while self.main_status is None or self.outgoing:
            for key, mask in self.selector.select():
                kind, target = key.data
                if kind == "agent":
                    self._agent_ready(mask)
                elif kind == "output":
                    self._output_ready(key.fileobj, *target)
                elif kind == "exited":
                    self._exited(target)
                elif kind == "stdin":
                    self._flush_stdin(target)
                elif kind == "probe":
                    self._probe_done(*target)
        return self.main_status

    # --- readiness probes ---------------------------------------------------------------------

    def _probe(self, probe_id: str, port: int) -> None:
        """Does 127.0.0.1:port accept a connection? Asked inside the sandbox's network
        namespace, so it works with block_network too; answered without blocking the loop."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            result = probe.connect_ex(("127.0.0.1", port))
        except (OSError, OverflowError):
            result = errno.EINVAL
        if result == errno.EINPROGRESS:
            self.selector.register(probe, selectors.EVENT_WRITE, ("probe", (probe, probe_id)))
        else:
            probe.close()
            self.send({"ev": "probe", "id": probe_id, "ok": result == 0})

    def _probe_done(self, probe: socket.socket, probe_id: str) -> None:
        self.selector.unregister(probe)
        error = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        probe.close()
        self.send({"ev": "probe", "id": probe_id, "ok": error == 0})


def _open_terminal(pty: dict) -> tuple[int, int]:  # type: ignore[type-arg]
    """A pseudo-terminal (leader, follower) of the size the client's terminal has."""
    leader, follower = os.openpty()
    rows, columns = int(pty.get("rows") or 0), int(pty.get("columns") or 0)
    if rows and columns:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return leader, follower


def _terminal_environment(pty: dict) -> dict[str, str]:  # type: ignore[type-arg]
    names = {"term": "TERM", "colorterm": "COLORTERM", "term_program": "TERM_PROGRAM"}
    return {variable: str(pty[key]) for key, variable in names.items() if pty.get(key)}


def _take_controlling_terminal() -> None:
    """In the child, after setsid: its terminal (stdin) becomes its controlling terminal,
    so ^C reaches it as SIGINT and a shell runs with job control."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _child_environment(environment: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {name: value for name, value in environment.items() if name not in OWN_VARIABLES}


def main() -> None:
    assert len(sys.argv) == 2, "usage: supervisor.py SOCKET"
    # terminate() is for the processes, not for us; a handler (unlike SIG_IGN) is not inherited.
    signal.signal(signal.SIGTERM, lambda *_: None)
    os._exit(Supervisor(sys.argv[1]).run())


if __name__ == "__main__":
    main()

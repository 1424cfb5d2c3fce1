"""The task command router: the gRPC service (`modal.task_command_router.TaskCommandRouter`)
that client 1.6.4 dials directly for a sandbox's stdio and for every `Sandbox.exec`.

It runs beside the sandboxes it serves (it only needs the node's `SandboxProcesses`), so
in a cluster each node can run its own. Every call carries `authorization: Bearer <jwt>`:
a credential the control plane signed for one task (`RouterCredentials`), which opens that
task's sandbox and no other. The client retries UNAUTHENTICATED once after fetching a
fresh credential (SandboxGetCommandRouterAccess).

Contracts from the client (modal/sandbox/_task_command_router_client.py, io_streams.py):
stdio streams never carry an empty chunk and end OK only at EOF; a read may come at any
offset, again and again, also after the process exited; stdin writes are idempotent by
offset; TaskExecStart is idempotent by exec_id; TaskExecWait answers exactly one of code or
signal, and NOT_FOUND only when the task itself is gone.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const
import jwt
from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as tcr
from modal_proto.task_command_router_grpc import TaskCommandRouterBase

from homeport.agent.sandbox_processes import MAIN, Process, SandboxProcesses

CREDENTIAL_LIFETIME_S = 3600.0
# TaskExecWait: the client's attempts carry a 60 s deadline; answer before it, and it asks again.
WAIT_SLICE_S = 50.0
OUTPUT_BEFORE_EXIT_S = 2.0  # how long an exit waits for open output streams to reach their end
READER_OPENS_WITHIN_S = 0.25  # ... and for a stream to be opened on output nobody has asked for

SecretResolver = Callable[[str, list[api_pb2.SecretSource]], Awaitable[dict[str, str]]]


class RouterCredentials:
    """JWTs for one task's router access (HS256 with a key the control plane and routers share)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def issue(self, task_id: str, lifetime_s: float = CREDENTIAL_LIFETIME_S) -> str:
        return jwt.encode(
            {"task_id": task_id, "exp": int(time.time() + lifetime_s)}, self.key, algorithm="HS256"
        )

    def task_id(self, token: str) -> str:
        """The task a valid credential opens; raises UNAUTHENTICATED (the client then
        fetches a fresh one and retries) otherwise."""
        try:
            claims = jwt.decode(
                token, self.key, algorithms=["HS256"], options={"require": ["exp", "task_id"]}
            )
        except jwt.ExpiredSignatureError:
            raise GRPCError(Status.UNAUTHENTICATED, "the command router credential has expired") from None
        except jwt.InvalidTokenError:
            raise GRPCError(Status.UNAUTHENTICATED, "the command router credential is not valid") from None
        return str(claims["task_id"])


class _RouteNames:
    """Stands in for `self` when asking the generated base class for its route table."""

    def __getattr__(self, name: str) -> str:
        return name


# The task a request's credential opens, and the credential (set per request, before its
# handler runs): a router on a cluster node shows it to the control plane (node_router.py).
_caller_task: contextvars.ContextVar[str] = contextvars.ContextVar("caller_task")
_caller_credential: contextvars.ContextVar[str] = contextvars.ContextVar("caller_credential")


def caller_credential() -> str:
    """The credential the current router request came with (already checked)."""
    return _caller_credential.get()


class CommandRouter:
    def __init__(
        self,
        credentials: RouterCredentials,
        sandbox: Callable[[str], SandboxProcesses | None],
        secrets: SecretResolver,
        activity: Callable[[str, int], None] = lambda task_id, change: None,
        snapshot: Callable[[str, str], Awaitable[str]] | None = None,
    ) -> None:
        self.credentials = credentials
        self.sandbox = sandbox
        self.secrets = secrets
        # Told of every call on a task as it begins (+1) and ends (-1): a sandbox with
        # calls open or recent is not idle (idle_timeout).
        self.activity = activity
        # (task id, snapshot id) -> a new image's id: the control plane records images.
        self.snapshot = snapshot

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """The generated route table, each handler behind the credential check; RPCs this
        router does not serve answer UNIMPLEMENTED naming themselves."""
        routes = TaskCommandRouterBase.__mapping__(_RouteNames())  # type: ignore[arg-type]
        return {
            path: grpclib.const.Handler(
                self._authorized(route.func), route.cardinality, route.request_type, route.reply_type
            )
            for path, route in routes.items()
        }

    def _authorized(self, name: str) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
        method = getattr(self, name, None)

        async def handle(stream: Stream[Any, Any]) -> None:
            metadata: Any = stream.metadata or {}
            header = metadata.get("authorization", "")
            token = (
                header[len("Bearer ") :] if isinstance(header, str) and header.startswith("Bearer ") else ""
            )
            task_id = self.credentials.task_id(token)
            _caller_task.set(task_id)
            _caller_credential.set(token)
            if method is None:
                raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not supported by this Homeport server yet")
            self.activity(task_id, 1)
            try:
                await method(stream)
            finally:
                self.activity(task_id, -1)

        return handle

    def _processes(self, task_id: str) -> SandboxProcesses:
        if task_id != _caller_task.get():
            raise GRPCError(Status.PERMISSION_DENIED, "this command router credential is for another sandbox")
        processes = self.sandbox(task_id)
        if processes is None:
            raise GRPCError(Status.NOT_FOUND, f"sandbox task {task_id} is not running")
        return processes

    def _find(self, task_id: str, exec_id: str) -> tuple[SandboxProcesses, Process]:
        processes = self._processes(task_id)
        process = processes.processes.get(exec_id)
        if process is None:
            raise GRPCError(Status.NOT_FOUND, f"no process {exec_id} in sandbox task {task_id}")
        return processes, process

    def _process(self, task_id: str, exec_id: str) -> Process:
        return self._find(task_id, exec_id)[1]

    # --- the entrypoint's stdio ---------------------------------------------------------------

    async def SandboxStdioReadV2(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        process = self._process(request.task_id, MAIN)
        fd = 2 if request.file_descriptor == tcr.SANDBOX_STDIO_FILE_DESCRIPTOR_STDERR else 1
        async for offset, data in process.stream(fd).read(request.offset):
            await stream.send_message(tcr.SandboxStdioReadV2Response(data=data, starting_offset=offset))

    async def SandboxStdinWriteV2(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        self._write_stdin(request.task_id, MAIN, request.offset, request.data, request.eof)
        await stream.send_message(tcr.SandboxStdinWriteV2Response())

    def _write_stdin(self, task_id: str, exec_id: str, offset: int, data: bytes, eof: bool) -> None:
        processes, process = self._find(task_id, exec_id)
        if process.exit_status is not None:
            raise GRPCError(Status.FAILED_PRECONDITION, "the process has exited; its stdin is closed")
        try:
            processes.write_stdin(exec_id, offset, data, eof)
        except ValueError as error:
            raise GRPCError(Status.INVALID_ARGUMENT, str(error)) from None
        except ConnectionError as error:
            raise GRPCError(Status.FAILED_PRECONDITION, str(error)) from None

    async def SandboxWaitUntilReady(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        processes = self._processes(request.task_id)
        if processes.readiness is None:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                "the sandbox was created without a readiness probe: pass "
                "readiness_probe=modal.Probe.with_tcp(port) or modal.Probe.with_exec(...) to Sandbox.create",
            )
        timeout_s = request.timeout if request.timeout > 0 else WAIT_SLICE_S
        if stream.deadline is not None:
            timeout_s = min(timeout_s, stream.deadline.time_remaining())
        if await processes.readiness.wait(timeout_s):
            await stream.send_message(
                tcr.SandboxWaitUntilReadyTcrResponse(ready_at=processes.readiness.ready_at)
            )
        elif processes.gone.is_set():
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                "the sandbox finished before its readiness probe passed: its output (sb.stdout, sb.stderr) says why",
            )
        else:
            raise GRPCError(Status.DEADLINE_EXCEEDED, "the sandbox's readiness probe has not passed yet")

    async def TaskSnapshotFilesystem(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        processes = self._processes(request.task_id)
        if self.snapshot is None:
            raise GRPCError(Status.UNIMPLEMENTED, "filesystem snapshots are not supported by this router")
        if processes.gone.is_set():
            raise GRPCError(
                Status.FAILED_PRECONDITION, "the sandbox has finished; only a running one can be snapshotted"
            )
        try:
            image_id = await self.snapshot(request.task_id, request.snapshot_id)
        except (LookupError, RuntimeError) as error:  # it ended meanwhile; copying failed
            raise GRPCError(Status.FAILED_PRECONDITION, f"the filesystem snapshot failed: {error}") from None
        await stream.send_message(tcr.TaskSnapshotFilesystemResponse(image_id=image_id))

    # --- exec -------------------------------------------------------------------------------

    async def TaskExecStart(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        processes = self._processes(request.task_id)
        if not request.command_args:
            raise GRPCError(Status.INVALID_ARGUMENT, "exec needs a command")
        if request.exec_id not in processes.processes:
            environment = await self.secrets(request.task_id, list(request.secret_sources))
            stdout = "pipe" if request.stdout_config == tcr.TASK_EXEC_STDOUT_CONFIG_PIPE else "devnull"
            stderr = {
                tcr.TASK_EXEC_STDERR_CONFIG_PIPE: "pipe",
                tcr.TASK_EXEC_STDERR_CONFIG_STDOUT: "stdout",
            }.get(request.stderr_config, "devnull")
            try:
                process = processes.exec(
                    request.exec_id,
                    list(request.command_args),
                    environment,
                    request.workdir if request.HasField("workdir") else None,
                    stdout,
                    stderr,
                    terminal_settings(request.pty_info)
                    if request.HasField("pty_info") and request.pty_info.enabled
                    else None,
                )
            except ConnectionError:
                raise GRPCError(Status.FAILED_PRECONDITION, "the sandbox has finished") from None
            if request.HasField("timeout_secs") and request.timeout_secs > 0:
                asyncio.get_running_loop().call_later(
                    request.timeout_secs, self._kill_if_running, processes, process
                )
        await stream.send_message(tcr.TaskExecStartResponse())

    @staticmethod
    def _kill_if_running(processes: SandboxProcesses, process: Process) -> None:
        if process.exit_status is None:
            try:
                processes.signal(process.process_id, 9)
            except ConnectionError:
                pass

    async def TaskExecStdioRead(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        process = self._process(request.task_id, request.exec_id)
        fd = 2 if request.file_descriptor == tcr.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR else 1
        process.reader_at(stream, fd, request.offset)
        try:
            async for start, data in process.stream(fd).read(request.offset):
                await stream.send_message(tcr.TaskExecStdioReadResponse(data=data))
                process.reader_at(stream, fd, start + len(data))
        finally:
            process.reader_at(stream, fd, None)

    async def TaskExecStdinWrite(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        self._write_stdin(request.task_id, request.exec_id, request.offset, request.data, request.eof)
        await stream.send_message(tcr.TaskExecStdinWriteResponse())

    async def TaskExecStdinWriteStream(self, stream: Stream[Any, Any]) -> None:
        """A bulk upload (sb.filesystem writes): start, data chunks, end (which closes
        stdin). A stream cut short leaves stdin open; the client asks TaskExecStdinStatus
        and resumes from the bytes written."""
        start = await _request(stream)
        if not start.HasField("start"):
            raise GRPCError(Status.INVALID_ARGUMENT, "a stdin write stream begins with `start`")
        task_id, exec_id, offset = start.start.task_id, start.start.exec_id, start.start.offset
        async for message in stream:
            if message.HasField("data") and message.data:
                self._write_stdin(task_id, exec_id, offset, message.data, False)
                offset += len(message.data)
            elif message.HasField("end"):
                self._write_stdin(task_id, exec_id, offset, b"", True)
        await stream.send_message(tcr.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        process = self._process(request.task_id, request.exec_id)
        await stream.send_message(
            tcr.TaskExecStdinStatusResponse(
                num_bytes_written=process.stdin_offset, closed=process.stdin_closed
            )
        )

    async def TaskExecPoll(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        process = self._process(request.task_id, request.exec_id)
        await stream.send_message(_exit_status(process, tcr.TaskExecPollResponse))

    async def TaskExecWait(self, stream: Stream[Any, Any]) -> None:
        request = await _request(stream)
        process = self._process(request.task_id, request.exec_id)
        try:
            await asyncio.wait_for(process.exited.wait(), WAIT_SLICE_S)
        except TimeoutError:
            raise GRPCError(Status.DEADLINE_EXCEEDED, "still running; wait again") from None
        # Client 1.6.4's wait() does not wait for the output it is streaming: `modal
        # container exec` starts printing tasks that open their streams, then calls wait()
        # and exits once it returns. Its streams can reach the router after the wait (seen:
        # 2-4 ms later, in about one exec of ten). So the exit follows the output: streams
        # already open send what there is first, and output no stream has been opened on
        # yet gets a moment for one (the cost of `p.wait()` before `p.stdout.read()`).
        await process.output_delivered(READER_OPENS_WITHIN_S, OUTPUT_BEFORE_EXIT_S)
        await stream.send_message(_exit_status(process, tcr.TaskExecWaitResponse))


async def listen(
    router: CommandRouter, host: str, port: int, tls: ssl.SSLContext | None
) -> tuple[Server, str]:
    """A gRPC server for `router` on host:port (0: any free port) and the URL clients dial."""
    server = Server([router])
    await server.start(host, port, ssl=tls)
    bound = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    shown = f"[{host}]" if ":" in host else host
    return server, f"{'https' if tls else 'http'}://{shown}:{bound}"


def terminal_settings(info: api_pb2.PTYInfo) -> dict[str, object]:
    """exec(pty=True), `modal shell`, Sandbox.create(pty=True): client 1.6.4 sends its
    terminal's size and kind once (it has no resize message)."""
    return {
        "rows": info.winsz_rows,
        "columns": info.winsz_cols,
        "term": info.env_term or "xterm-256color",
        "colorterm": info.env_colorterm,
        "term_program": info.env_term_program,
    }


def _exit_status(process: Process, response_type: Any) -> Any:
    if process.exit_status is None:
        return response_type()
    kind, value = process.exit_status
    return response_type(**{kind: value})


async def _request(stream: Stream[Any, Any]) -> Any:
    request = await stream.recv_message()
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "the request has no message")
    return request

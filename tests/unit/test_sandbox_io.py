"""What the control plane asks of a sandbox on its node (agent/sandbox_io.py), and the
control-plane side of a cluster node's router (server/router_callbacks.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from modal_proto import api_pb2

from homeport.agent.router import RouterCredentials
from homeport.agent.sandbox_io import SandboxActivity, read_output, write_v1_stdin
from homeport.agent.sandbox_processes import MAIN, Process, SandboxProcesses
from homeport.server.router_callbacks import router_callback_routes


def test_output_is_read_from_an_offset_waits_for_more_and_says_when_it_ended() -> None:
    async def scenario() -> list[Any]:
        processes = SandboxProcesses(Path("/nonexistent/socket"))
        stream = processes.processes[MAIN].stream(1)
        stream.append(b"hello ")
        stream.append(b"world")
        seen: list[Any] = [await read_output(processes, 1, 6, 0.05)]
        began = time.monotonic()
        seen.append(await read_output(processes, 1, 11, 0.2))  # nothing new: waits, then answers
        seen.append(time.monotonic() - began >= 0.15)
        asyncio.get_running_loop().call_later(0.05, stream.append, b"!")
        seen.append(await read_output(processes, 1, 11, 5.0))  # woken by new output
        stream.close()
        seen.append(await read_output(processes, 1, 12, 5.0))  # read to its end: ended
        seen.append(await read_output(None, 1, 0, 1.0))  # a sandbox the node forgot
        return seen

    assert asyncio.run(scenario()) == [
        ([(6, b"world")], False),
        ([], False),
        True,
        ([(11, b"!")], False),
        ([], True),
        None,
    ]


def test_an_exit_is_reported_after_its_output_reached_the_streams_reading_it() -> None:
    """`modal container exec` (client 1.6.4) prints what its streams read and exits once
    wait() returns; its streams can open just after the wait (agent/router.py)."""

    async def waited(process: Process, then: Any = None) -> float:
        if then is not None:
            asyncio.get_running_loop().call_later(0.05, then)
        began = time.monotonic()
        await process.output_delivered(open_within_s=0.3, send_within_s=1.0)
        return time.monotonic() - began

    def with_output(name: str, reader_at: int | None = None) -> Process:
        process = Process(name)
        process.stdout.append(b"inside\n")
        if reader_at is not None:
            process.reader_at("stream", 1, reader_at)
        return process

    async def scenario() -> list[bool]:
        late, behind = with_output("late"), with_output("behind", reader_at=0)
        return [
            await waited(Process("silent")) < 0.05,  # no output: nothing to wait for
            0.29 < await waited(with_output("unread")) < 0.6,  # nobody asks: a moment, then on
            # a stream opens just after the wait and sends it all: the exit follows at once
            await waited(late, lambda: late.reader_at("stream", 1, 7)) < 0.25,
            await waited(behind, lambda: behind.reader_at("stream", 1, 7)) < 0.25,
            0.99 < await waited(with_output("stalled", reader_at=0)) < 1.4,  # stopped reading
        ]

    assert asyncio.run(scenario()) == [True] * 5


def test_v1_stdin_writes_are_numbered_and_refused_once_the_sandbox_ended() -> None:
    assert write_v1_stdin(None, 1, b"x", False) == "the sandbox has finished; its stdin is closed"
    processes = SandboxProcesses(Path("/nonexistent/socket"))
    processes.v1_stdin_index = 3
    assert write_v1_stdin(processes, 2, b"again", False) is None  # a retry: already delivered
    processes.processes[MAIN].exit_status = ("code", 0)
    assert "finished" in (write_v1_stdin(processes, 4, b"late", False) or "")


def test_activity_counts_open_calls_and_time_since_the_last() -> None:
    activity = SandboxActivity()
    assert activity.idle_s("ta-1") is None  # no call yet: the caller counts from the start
    activity.touch("ta-1", 1)
    assert activity.idle_s("ta-1") == 0.0  # a call is open
    activity.touch("ta-1", -1)
    time.sleep(0.05)
    idle = activity.idle_s("ta-1")
    assert idle is not None and 0.04 <= idle < 5
    activity.forget("ta-1")
    assert activity.idle_s("ta-1") is None
    held = SandboxActivity(lambda task_id: task_id == "ta-held")
    held.touch("ta-gone", 1)  # a read after the sandbox ended: not counted, nothing kept
    held.touch("ta-held", -1)  # the end of a call it forgot: ignored
    assert held.idle_s("ta-gone") is None and held.idle_s("ta-held") is None


class _Sandboxes:
    """The two calls the callbacks make, answering for the task they are asked about."""

    async def exec_environment(self, task_id: str, sources: list[api_pb2.SecretSource]) -> dict[str, str]:
        environment = {"TASK": task_id}
        for source in sources:
            environment.update(source.env.contents or {source.secret_id: "secret value"})
        return environment

    async def snapshot_filesystem(self, task_id: str, snapshot_id: str) -> str:
        if task_id == "ta-gone":
            raise LookupError("it ended")
        return f"im-{task_id}-{snapshot_id}"


def test_router_callbacks_answer_only_for_the_task_a_valid_credential_opens() -> None:
    credentials = RouterCredentials(b"k" * 32)

    async def scenario() -> list[Any]:
        app = web.Application()
        app.add_routes(router_callback_routes(credentials, _Sandboxes()))  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            answers = []
            for token, path, body in [
                (credentials.issue("ta-1"), "environment", {"sources": [{"env": {"A": "1"}}, {"secret_id": "st-1"}]}),
                (credentials.issue("ta-1"), "snapshot", {"snapshot_id": "s1"}),
                (RouterCredentials(b"o" * 32).issue("ta-1"), "environment", {"sources": []}),
                (credentials.issue("ta-1", lifetime_s=-60), "environment", {"sources": []}),
                (credentials.issue("ta-gone"), "snapshot", {"snapshot_id": "s1"}),
                (credentials.issue("ta-1"), "environment", ["not", "an", "object"]),
            ]:  # fmt: skip
                response = await client.post(
                    f"/_homeport/router/{path}", json=body, headers={"authorization": f"Bearer {token}"}
                )
                answers.append((response.status, await response.json(content_type=None)))
            return answers

    answers = asyncio.run(scenario())
    assert answers[0] == (200, {"environment": {"TASK": "ta-1", "A": "1", "st-1": "secret value"}})
    assert answers[1] == (200, {"image_id": "im-ta-1-s1"})
    assert answers[2][0] == 401 and "not valid" in answers[2][1]["error"]
    assert answers[3][0] == 401 and "expired" in answers[3][1]["error"]
    assert answers[4] == (409, {"error": "the filesystem snapshot failed: it ended"})
    assert answers[5] == (400, {"error": "the body must be a JSON object"})

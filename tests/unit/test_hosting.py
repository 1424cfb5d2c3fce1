"""Tasks on the server's loop run greenlet-hosted: synchronous code inside them may wait
for a coroutine (as SQLAlchemy's asyncpg driver does at each round trip) without blocking
the loop, and everything else about a task behaves as on a plain loop."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.util.concurrency import await_

from homeport.server.store import hosting


def _wait_synchronously(event: asyncio.Event) -> str:
    """Stands in for a blocking-looking driver call: it waits for another task."""
    await_(event.wait())
    return "answered"


def test_synchronous_code_waits_while_other_tasks_run() -> None:
    async def main() -> list[str]:
        event = asyncio.Event()
        order: list[str] = []

        async def waiter() -> None:
            order.append(_wait_synchronously(event))

        async def setter() -> None:
            order.append("other task ran")
            event.set()

        async with asyncio.TaskGroup() as group:
            group.create_task(waiter())
            group.create_task(setter())
        return order

    assert hosting.run(main()) == ["other task ran", "answered"]


def test_results_exceptions_and_timeouts_behave_as_on_a_plain_loop() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("from the task")

    async def main() -> tuple[int, str, bool]:
        result = await asyncio.create_task(asyncio.sleep(0, result=7))
        with pytest.raises(ValueError) as raised:
            await asyncio.create_task(fails())
        timed_out = False
        try:
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        except TimeoutError:
            timed_out = True
        return result, str(raised.value), timed_out

    assert hosting.run(main()) == (7, "from the task", True)


def test_a_cancelled_task_runs_its_cleanup_and_ends_cancelled() -> None:
    async def main() -> tuple[bool, bool]:
        cleaned = asyncio.Event()
        started = asyncio.Event()

        async def long_running() -> None:
            try:
                started.set()
                _wait_synchronously(asyncio.Event())  # waits forever, inside "driver" code
            finally:
                cleaned.set()

        task = asyncio.create_task(long_running())
        await started.wait()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled(), cleaned.is_set()

    assert hosting.run(main()) == (True, True)


def test_outside_a_hosted_task_the_driver_refuses_with_a_clear_error() -> None:
    async def main() -> None:
        _wait_synchronously(asyncio.Event())

    with pytest.raises(MissingGreenlet):
        asyncio.run(main())

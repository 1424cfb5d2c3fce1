"""Database calls that do not block the event loop, with the service code left synchronous.

The services are plain synchronous SQLAlchemy (`with engine.begin() as connection: ...`).
On PostgreSQL the server's engine is the synchronous face of an asyncio engine on
asyncpg (`store.db.create_server_engine`): each round trip inside it calls SQLAlchemy's
`await_()`, which hands the driver's coroutine to the asyncio task running the code and
resumes once it is answered. That only works when the code runs inside a greenlet that
SQLAlchemy's `greenlet_spawn` made. This module makes that true of every task on the
server's loop: `new_loop()` installs a task factory that runs each task's coroutine
inside such a greenlet (`hosted`). So a database call anywhere on the loop (an RPC
handler, the scheduler, the gateway, a background loop) waits for PostgreSQL without
stalling the other tasks, and the code reads exactly as before. This is the mechanism
SQLAlchemy's own `AsyncSession` is built on; here it wraps whole tasks instead of one
function at a time.

SQLite keeps its in-process driver: a call on local disk takes microseconds, and with no
yield inside a transaction, the single-machine server keeps today's semantics (a handler's
database work is never interleaved with another's). Long reports on SQLite still go to a
thread (`run_long`).

Code on another thread (asyncio.to_thread) has no such greenlet: it must not touch a
PostgreSQL server engine, and SQLAlchemy says so (`MissingGreenlet`) if it does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.util.concurrency import await_, greenlet_spawn

T = TypeVar("T")


class _PassUp:
    """Awaited by `greenlet_spawn` on the task's side: yields what the hosted coroutine
    yielded (a future, or None) to the task, and returns what the task sends back."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.value)


def _drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Step `coroutine` from inside the greenlet; each of its suspensions goes up to the
    task through `await_`, and whatever the task throws (a cancellation) comes back in."""
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            yielded = coroutine.send(sent) if thrown is None else coroutine.throw(thrown)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            sent, thrown = await_(_PassUp(yielded)), None
        except BaseException as error:
            sent, thrown = None, error


async def hosted(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` so that synchronous code inside it may make async-driver calls."""
    return await greenlet_spawn(_drive, coroutine)


def _hosted_task(
    loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any], **options: Any
) -> asyncio.Task[Any]:
    return asyncio.Task(hosted(coroutine), loop=loop, **options)


def new_loop() -> asyncio.AbstractEventLoop:
    """The server's event loop: every task on it runs hosted."""
    loop = asyncio.new_event_loop()
    loop.set_task_factory(_hosted_task)  # type: ignore[arg-type]
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a loop from `new_loop()`."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)


async def run_long(engine: sa.Engine, work: Callable[..., T], *args: Any) -> T:
    """Long database work (a report over days of records, a retention sweep): on an async
    driver it simply runs here, yielding at each round trip; on SQLite's in-process driver
    it goes to a thread so the loop keeps serving meanwhile."""
    if engine.dialect.is_async:
        return work(*args)
    return await asyncio.to_thread(work, *args)

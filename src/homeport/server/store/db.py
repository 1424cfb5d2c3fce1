"""Engine creation and schema upgrades. SQLite (WAL) by default, PostgreSQL by URL: psycopg2
for the CLI and migrations, asyncpg for the running server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

T = TypeVar("T")
log = logging.getLogger("homeport.db")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # WAL keeps readers off writers' backs; synchronous=NORMAL still survives a
            # process crash (kill -9), which is the durability the server promises.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def create_server_engine(url: str) -> sa.Engine:
    """The engine the server's event loop uses. On PostgreSQL it is the synchronous face
    of an asyncio engine on asyncpg, so each round trip yields to the loop (see
    `store/hosting.py`; only code running in a hosted task may use it). On SQLite it is
    the plain engine: local disk, no network to wait for."""
    if url.startswith("sqlite"):
        return create_engine(url)
    async_url = sa.make_url(url).set(drivername="postgresql+asyncpg")
    # No pre-ping: through the loop it costs a round trip of ~0.3 ms on every checkout
    # (measured: 0.79 ms per one-statement transaction with it, 0.51 ms without). After a
    # PostgreSQL restart the first statement on a stale connection fails as a disconnect,
    # which invalidates the whole pool: that request waits for the database and runs again
    # (servicer.DATABASE_PATIENCE_S), a background loop retries at its next turn.
    engine = create_async_engine(async_url, pool_size=10, max_overflow=20).sync_engine
    sa.event.listen(engine, "do_connect", _connect_refused_as_operational_error)
    sa.event.listen(engine, "handle_error", _unreachable_as_operational_error)
    return engine


# PostgreSQL's "connection exception" class and "operator intervention" (shutting down,
# starting up): the server is unreachable for a moment, the statement is not at fault.
_UNREACHABLE_SQLSTATES = ("08", "57P")


def _connect_refused_as_operational_error(dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
    try:
        return dialect.loaded_dbapi.connect(*cargs, **cparams)
    except OSError as error:  # refused, unreachable, timed out: no DBAPI error of its own
        raise dialect.loaded_dbapi.OperationalError(
            f"cannot connect to PostgreSQL: {error}", error
        ) from error


def _unreachable_as_operational_error(context: sa.engine.ExceptionContext) -> BaseException | None:
    """psycopg2 reports a PostgreSQL that is down or restarting as OperationalError, which
    the server answers with UNAVAILABLE and its loops retry. asyncpg reports it as a plain
    ConnectionRefusedError at connect (made an OperationalError above) or as a DBAPIError
    with a connection SQLSTATE: make those OperationalError too, so one rule covers both."""
    error = context.original_exception
    if not isinstance(error, Exception):
        return None  # a cancelled request (CancelledError) stays cancelled
    sqlstate = str(getattr(error, "sqlstate", None) or "")
    if context.is_disconnect or sqlstate.startswith(_UNREACHABLE_SQLSTATES):
        # A disconnect invalidates the whole pool (its other connections died too); the
        # asyncpg dialect does not count an "admin shutdown" SQLSTATE as one by itself.
        context.is_disconnect = True
        return sa.exc.OperationalError(context.statement, context.parameters, error)
    return None


async def once_the_database_answers(work: Callable[[], object], what: str, attempts: int = 600) -> bool:
    """Run `work`, a write that must not be lost (a container's or a sandbox's end),
    waiting out an unreachable database (a PostgreSQL restart) a second at a time; False
    if it stayed away for all `attempts`."""
    for attempt in range(attempts):
        try:
            work()
            return True
        except sa.exc.OperationalError as error:
            if attempt == 0:
                log.warning("%s waits for the database: %s", what, error.orig)
            await asyncio.sleep(1.0)
    log.error("%s could not be recorded: the database stayed unreachable", what)
    return False


def once_more_on_conflict(work: Callable[[], T]) -> T:
    """Run a read-then-insert transaction; if a concurrent one inserted the same key first
    (another request on this server while this one waited for PostgreSQL, or another
    replica), run it once more: this time the read finds the row."""
    try:
        return work()
    except sa.exc.IntegrityError:
        return work()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: sa.Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    config = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

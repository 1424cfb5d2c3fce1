"""What the server forgets, and when: call results and data past their retention, logs past
theirs, and blobs nothing needs any more.

A blob is needed while a mount holds it as file content, a queued or running input holds
it as its argument, a stored result or data chunk holds it, or it is younger than the
grace period (uploaded, and about to be named by the request that uses it). Everything
else is deleted, row first, then file, so a blob a reader can still find is never half
gone. The settings and their defaults are in `config.Limits`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import sqlalchemy as sa

from homeport.config import Limits
from homeport.server.blobstore import URL_LIFETIME_S, LocalBlobStore
from homeport.server.services.calls import DONE
from homeport.server.store import schema
from homeport.server.store.hosting import run_long

log = logging.getLogger("homeport.retention")

BLOBS_PER_PASS = 1000


def _unneeded_blobs(cutoff: float) -> sa.Select[Any]:
    b, i = schema.blobs, schema.inputs

    def held_by(table: sa.Table, *conditions: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return ~sa.exists().where(table.c.blob_id == b.c.id, *conditions)

    mount_contents = ~sa.exists().where(schema.mount_contents.c.blob_id == b.c.id)
    return (
        sa.select(b.c.id)
        .where(
            b.c.created_at < cutoff,
            # An upload still in flight may use its URL for as long as the URL lives.
            sa.or_(b.c.complete.is_(True), b.c.created_at < cutoff - URL_LIFETIME_S),
            mount_contents,
            held_by(i, i.c.state != DONE),
            held_by(schema.outputs),
            held_by(schema.call_data),
        )
        .limit(BLOBS_PER_PASS)
    )


class RetentionService:
    def __init__(self, engine: sa.Engine, blobs: LocalBlobStore, settings: Limits) -> None:
        self.engine = engine
        self.blobs = blobs
        self.settings = settings

    async def run(self) -> None:
        while True:
            try:
                await self.collect()
            except Exception:
                log.exception("retention pass failed; trying again in %.0f s", self.settings.interval_s)
            await asyncio.sleep(self.settings.interval_s)

    async def collect(self, now: float | None = None) -> tuple[int, int]:
        """One pass; returns (blobs deleted, bytes freed). Each transaction is long work
        (`run_long`); files are deleted on a thread."""
        now = time.time() if now is None else now
        await run_long(self.engine, self._expire, now)
        deleted, freed = 0, 0
        while True:
            blob_ids = await run_long(self.engine, self._forget_unneeded_blobs, now)
            freed += await asyncio.to_thread(self._remove_files, blob_ids)
            deleted += len(blob_ids)
            if len(blob_ids) < BLOBS_PER_PASS:
                break
        if deleted:
            log.info("deleted %d blob(s) nothing needs any more (%.1f MiB)", deleted, freed / 2**20)
        return deleted, freed

    def _expire(self, now: float) -> None:
        results_cutoff = now - self.settings.result_s
        with self.engine.begin() as connection:
            connection.execute(schema.outputs.delete().where(schema.outputs.c.created_at < results_cutoff))
            connection.execute(
                schema.call_data.delete().where(schema.call_data.c.created_at < results_cutoff)
            )
            connection.execute(
                schema.logs.delete().where(schema.logs.c.timestamp < now - self.settings.log_s)
            )

    def _forget_unneeded_blobs(self, now: float) -> list[str]:
        """Delete the rows of (at most a batch of) unneeded blobs; returns their ids."""
        with self.engine.begin() as connection:
            blob_ids = list(connection.execute(_unneeded_blobs(now - self.settings.blob_grace_s)).scalars())
            if blob_ids:
                connection.execute(schema.blobs.delete().where(schema.blobs.c.id.in_(blob_ids)))
        return blob_ids

    def _remove_files(self, blob_ids: list[str]) -> int:
        return sum(self.blobs.remove_file(blob_id) for blob_id in blob_ids)

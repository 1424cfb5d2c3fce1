"""Retention: a blob is kept exactly as long as something needs it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from homeport import ids
from homeport.config import Limits, Settings
from homeport.server.blobstore import LocalBlobStore
from homeport.server.retention import RetentionService
from homeport.server.services.calls import DONE, PENDING
from homeport.server.state import open_engine
from homeport.server.store import schema

HOUR = 3600.0


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    settings = Settings(data_dir=tmp_path)
    return LocalBlobStore(
        settings.layout, open_engine(settings), "http://127.0.0.1:1", b"key", max_bytes=1000
    )


def _blob(store: LocalBlobStore, age_s: float) -> str:
    blob_id = store.put_bytes(b"x" * 100, "ac-a")
    with store.engine.begin() as connection:
        connection.execute(
            schema.blobs.update().where(schema.blobs.c.id == blob_id).values(created_at=time.time() - age_s)
        )
    return blob_id


def _input(engine: sa.Engine, blob_id: str, state: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            schema.inputs.insert().values(
                id=ids.new_id("input"),
                function_call_id="fc-1",
                function_id="fu-1",
                idx=0,
                payload=b"",
                state=state,
                created_at=time.time(),
                blob_id=blob_id,
            )
        )


def test_blobs_nothing_needs_are_deleted_and_the_rest_kept(store: LocalBlobStore) -> None:
    engine = store.engine
    orphan, young = _blob(store, 3 * HOUR), _blob(store, 60)
    queued_argument, finished_argument = _blob(store, 3 * HOUR), _blob(store, 3 * HOUR)
    result, mount_file = _blob(store, 3 * HOUR), _blob(store, 3 * HOUR)
    _input(engine, queued_argument, PENDING)
    _input(engine, finished_argument, DONE)
    with engine.begin() as connection:
        connection.execute(
            schema.outputs.insert().values(
                function_call_id="fc-1",
                input_id="in-1",
                idx=0,
                result=b"",
                data_format=1,
                created_at=time.time(),
                blob_id=result,
            )
        )
        connection.execute(
            schema.mount_contents.insert().values(sha256_hex="0" * 64, blob_id=mount_file, size=100)
        )

    deleted, freed = asyncio.run(RetentionService(engine, store, Limits(blob_grace_s=HOUR)).collect())

    assert (deleted, freed) == (2, 200)
    assert not store.exists(orphan) and not store.exists(finished_argument)
    assert all(store.exists(kept) for kept in (young, queued_argument, result, mount_file))


def test_results_and_logs_past_their_retention_are_deleted(store: LocalBlobStore) -> None:
    engine = store.engine
    old, recent = time.time() - 3 * HOUR, time.time()
    with engine.begin() as connection:
        for created in (old, recent):
            connection.execute(
                schema.outputs.insert().values(
                    function_call_id="fc-1",
                    input_id="in-1",
                    idx=0,
                    result=b"",
                    data_format=1,
                    created_at=created,
                )
            )
            connection.execute(
                schema.logs.insert().values(app_id="ap-1", file_descriptor=1, data="line", timestamp=created)
            )
    asyncio.run(RetentionService(engine, store, Limits(result_s=HOUR, log_s=HOUR)).collect())
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(schema.outputs)).scalar() == 1
        assert connection.execute(sa.select(sa.func.count()).select_from(schema.logs)).scalar() == 1


def test_a_blob_larger_than_the_limit_is_refused_with_the_reason(store: LocalBlobStore) -> None:
    assert store.refusal(1000) is None
    refusal = store.refusal(1001)
    assert refusal is not None and "over this server's limit of 1000 bytes" in refusal
    assert "does not fit" in (
        LocalBlobStore(store.layout, store.engine, "", b"k", max_bytes=2**62).refusal(2**60) or ""
    )

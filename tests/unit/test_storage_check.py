"""The existence check every Dict and Queue call makes (services/storage.py `check`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpclib import GRPCError, Status
from modal_proto import api_pb2

from homeport.config import Settings
from homeport.server.services import storage
from homeport.server.services.storage import StorageObjectService
from homeport.server.state import open_engine

IF_MISSING = api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING


def test_a_check_answers_only_the_owner_and_stops_at_once_when_this_server_deletes(tmp_path: Path) -> None:
    service = StorageObjectService(open_engine(Settings(data_dir=tmp_path)))
    made, _ = service.get_or_create("dict", "ac-a", "main", "scores", IF_MISSING)
    assert service.check("dict", "ac-a", made.id) == made.id
    assert service.check("dict", "ac-a", made.id) == made.id  # now from what it read
    for kind, workspace in (("dict", "ac-b"), ("queue", "ac-a")):  # another's, or not a queue
        with pytest.raises(GRPCError) as refused:
            service.check(kind, workspace, made.id)
        assert refused.value.status == Status.NOT_FOUND
    service.delete("dict", "ac-a", made.id)
    with pytest.raises(GRPCError) as gone:
        service.check("dict", "ac-a", made.id)
    assert gone.value.status == Status.NOT_FOUND and "not found" in str(gone.value.message)


def test_a_deletion_elsewhere_is_seen_once_what_was_read_is_older_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_engine(Settings(data_dir=tmp_path))
    here, elsewhere = StorageObjectService(engine), StorageObjectService(engine)  # two replicas
    made, _ = here.get_or_create("queue", "ac-a", "main", "jobs", IF_MISSING)
    assert here.check("queue", "ac-a", made.id) == made.id
    elsewhere.delete("queue", "ac-a", made.id)
    assert here.check("queue", "ac-a", made.id) == made.id  # within the limit: what it read
    monkeypatch.setattr(storage, "KNOWN_FOR_S", 0.0)
    with pytest.raises(GRPCError) as gone:
        here.check("queue", "ac-a", made.id)
    assert gone.value.status == Status.NOT_FOUND

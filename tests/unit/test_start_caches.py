"""What a container start reads from memory instead of the database: its app's layout
(services/apps.py `layout`), its mounts' files (services/mounts.py `files`) and its own
credential (server/auth.py `remember_task`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from grpclib import GRPCError, Status
from modal_proto import api_pb2

from homeport.config import Settings
from homeport.server.auth import AuthService, hash_secret
from homeport.server.notify import Notifier
from homeport.server.services import apps as apps_module
from homeport.server.services import mounts as mounts_module
from homeport.server.services.apps import AppService
from homeport.server.services.mounts import MountService
from homeport.server.state import open_engine
from homeport.server.store import schema


def _deployed_function(apps: AppService, app_id: str, tag: str) -> str:
    function_id = apps.precreate_function(app_id, tag, "")
    metadata = api_pb2.FunctionHandleMetadata(function_name=tag)
    apps.save_function(function_id, app_id, tag, api_pb2.Function(function_name=tag), metadata, None)
    return function_id


def _app(engine: sa.Engine, apps: AppService) -> tuple[str, str]:
    workspace_id = AuthService(engine).create_workspace("shop")
    return workspace_id, apps.create(workspace_id, "main", "shop", api_pb2.APP_STATE_EPHEMERAL, "cl-1")


def test_a_layout_shows_this_servers_changes_at_once(tmp_path: Path) -> None:
    engine = open_engine(Settings(data_dir=tmp_path))
    apps = AppService(engine, Notifier())
    workspace_id, app_id = _app(engine, apps)
    first = _deployed_function(apps, app_id, "first")
    assert dict(apps.layout(app_id).function_ids) == {"first": first}
    second = _deployed_function(apps, app_id, "second")  # after the layout was kept
    assert dict(apps.layout(app_id).function_ids) == {"first": first, "second": second}
    apps.create_class(app_id, "", "Cart", second, b"")
    assert list(apps.layout(app_id).class_ids) == ["Cart"]
    apps.publish(workspace_id, app_id, "", 0, {"renamed": first}, {})
    assert apps.layout(app_id).function_ids["renamed"] == first
    layout = apps.layout(app_id)
    layout.function_ids["scribbled"] = "fu-x"  # the caller's copy
    assert "scribbled" not in apps.layout(app_id).function_ids


def test_with_replicas_another_replicas_change_is_seen_once_the_layout_is_older_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_engine(Settings(data_dir=tmp_path))
    here, elsewhere = AppService(engine, Notifier()), AppService(engine, Notifier())
    here.replicated = elsewhere.replicated = True
    _, app_id = _app(engine, here)
    first = _deployed_function(here, app_id, "first")
    assert dict(here.layout(app_id).function_ids) == {"first": first}
    second = _deployed_function(elsewhere, app_id, "second")
    monkeypatch.setattr(apps_module, "APP_CACHE_TTL_S", 0.0)
    assert dict(here.layout(app_id).function_ids) == {"first": first, "second": second}


def test_a_remembered_credential_works_without_a_read_and_stops_when_forgotten(tmp_path: Path) -> None:
    engine = open_engine(Settings(data_dir=tmp_path))
    auth = AuthService(engine)
    with engine.begin() as connection:
        connection.execute(
            schema.tasks.insert().values(
                id="ta-1",
                workspace_id="ac-a",
                app_id="ap-1",
                function_id="fu-1",
                secret_hash=hash_secret("s3cret"),
                state="starting",
                created_at=time.time(),
            )
        )
    auth.remember_task("ta-1", "s3cret", "ac-a", "ap-1", "fu-1")
    with engine.begin() as connection:  # the database would now refuse it
        connection.execute(sa.update(schema.tasks).where(schema.tasks.c.id == "ta-1").values(state="stopped"))
    verified = auth.verify_task("ta-1", "s3cret")
    assert (verified.workspace_id, verified.identity.function_id) == ("ac-a", "fu-1")
    with pytest.raises(GRPCError) as wrong:
        auth.verify_task("ta-1", "guessed")  # only the very secret is remembered
    assert wrong.value.status == Status.UNAUTHENTICATED
    auth.forget_task("ta-1")
    with pytest.raises(GRPCError) as stopped:
        auth.verify_task("ta-1", "s3cret")
    assert stopped.value.status == Status.UNAUTHENTICATED and "stopped" in str(stopped.value.message)


def test_a_function_given_to_another_app_leaves_the_first_apps_layout(tmp_path: Path) -> None:
    engine = open_engine(Settings(data_dir=tmp_path))
    apps = AppService(engine, Notifier())
    workspace_id, first_app = _app(engine, apps)
    second_app = apps.create(workspace_id, "main", "shop", api_pb2.APP_STATE_EPHEMERAL, "cl-2")
    moved = _deployed_function(apps, first_app, "moved")
    assert dict(apps.layout(first_app).function_ids) == {"moved": moved}
    metadata = api_pb2.FunctionHandleMetadata(function_name="moved")
    apps.save_function(moved, second_app, "moved", api_pb2.Function(function_name="moved"), metadata, None)
    assert dict(apps.layout(first_app).function_ids) == {}
    assert dict(apps.layout(second_app).function_ids) == {"moved": moved}


def test_mounts_files_are_kept_within_a_bound_the_least_recently_used_going_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_engine(Settings(data_dir=tmp_path))
    with engine.begin() as connection:
        connection.execute(
            schema.mount_contents.insert(),
            [{"sha256_hex": f"{n:064x}", "blob_id": f"bl-{n}", "size": 1} for n in range(3)],
        )
    service = MountService(engine, None)  # type: ignore[arg-type]  # no blobs read here
    files = [{"path": f"/f{n}", "sha256": f"{n:064x}", "mode": 0o644} for n in range(3)]
    mounts = [service.create(None, None, files) for _ in range(4)]
    monkeypatch.setattr(mounts_module, "FILES_CACHED", 12)  # room for 4 mounts of 3 files
    for mount_id in mounts:
        assert [f["blob_id"] for f in service.files(mount_id)[1]] == ["bl-0", "bl-1", "bl-2"]
    service.files(mounts[0])  # used again: the second is now the least recently used
    newest = service.create(None, None, files)
    service.files(newest)
    assert list(service._files) == [mounts[2], mounts[3], mounts[0], newest]
    monkeypatch.setattr(mounts_module, "FILES_CACHED", 8)  # a mount over a quarter of it
    assert [f["path"] for f in service.files(service.create(None, None, files))[1]] == ["/f0", "/f1", "/f2"]
    assert len(service._files) == 4  # read, not kept

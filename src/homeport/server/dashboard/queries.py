"""What the dashboard shows, read from the database, always within one workspace. Read
only: the dashboard changes nothing except by asking the scheduler (stopping a container)."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport.server.store import schema

STATE_NAMES: dict[int, str] = {
    value: name.removeprefix("APP_STATE_").lower() for name, value in api_pb2.AppState.items()
}
CALL_STATUS_NAMES: dict[int, str] = {
    value: name.removeprefix("FUNCTION_CALL_INPUT_STATUS_").lower().replace("_", " ")
    for name, value in api_pb2.FunctionCallInputStatus.items()
}
IMAGE_STATUS = {
    value: name.removeprefix("GENERIC_STATUS_").lower()
    for name, value in api_pb2.GenericResult.GenericStatus.items()
}


def when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def apps(engine: sa.Engine, workspace_id: str) -> list[dict[str, Any]]:
    a, t = schema.apps, schema.tasks
    running = sa.select(sa.func.count()).where(t.c.app_id == a.c.id, t.c.state != "stopped").scalar_subquery()
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                a.c.id, a.c.name, a.c.description, a.c.environment_name, a.c.state, a.c.created_at, running
            )
            .where(a.c.workspace_id == workspace_id)
            .order_by(a.c.created_at.desc())
            .limit(200)
        ).all()
    return [
        {
            "id": row.id,
            "name": row.name or row.description,
            "environment": row.environment_name,
            "state": STATE_NAMES.get(row.state, str(row.state)),
            "created": when(row.created_at),
            "running": row[-1],
        }
        for row in rows
    ]


def failures(engine: sa.Engine, input_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(exception, traceback) of failed inputs whose results are still kept."""
    o = schema.outputs
    found: dict[str, tuple[str, str]] = {}
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(o.c.input_id, o.c.result).where(o.c.input_id.in_(input_ids))
        ).all()
    for row in rows:
        result = api_pb2.GenericResult()
        result.ParseFromString(row.result)
        if result.status != api_pb2.GenericResult.GENERIC_STATUS_SUCCESS:
            found[row.input_id] = (result.exception, result.traceback)
    return found


def containers(
    engine: sa.Engine, workspace_id: str, app_id: str = "", function_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    t, f = schema.tasks, schema.functions
    query = (
        sa.select(t.c.id, t.c.app_id, t.c.function_id, t.c.state, t.c.exit_code, t.c.stop_reason, t.c.created_at, t.c.stopped_at, f.c.tag)
        .join(f, f.c.id == t.c.function_id, isouter=True)
        .where(t.c.workspace_id == workspace_id)
    )  # fmt: skip
    if app_id:
        query = query.where(t.c.app_id == app_id)
    if function_ids is not None:
        query = query.where(t.c.function_id.in_(function_ids))
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(t.c.created_at.desc()).limit(100)).all()
    return [
        {
            "id": row.id,
            "app_id": row.app_id,
            "function": row.tag or row.function_id,
            "state": row.state,
            "exit_code": "" if row.exit_code is None else row.exit_code,
            "reason": row.stop_reason or "",
            "started": when(row.created_at),
            "stopped": when(row.stopped_at),
        }
        for row in rows
    ]


def task(engine: sa.Engine, workspace_id: str, task_id: str) -> sa.Row | None:
    t = schema.tasks
    with engine.connect() as connection:
        return connection.execute(
            sa.select(t.c.id, t.c.app_id, t.c.function_id, t.c.state, t.c.stop_reason, t.c.created_at).where(
                t.c.id == task_id, t.c.workspace_id == workspace_id
            )
        ).first()


def images(engine: sa.Engine, workspace_id: str) -> list[dict[str, Any]]:
    i = schema.images
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(i.c.id, i.c.status, i.c.created_at, i.c.layers, i.c.exception)
            .where(i.c.workspace_id == workspace_id)
            .order_by(i.c.created_at.desc())
            .limit(200)
        ).all()
    return [
        {
            "id": row.id,
            "status": IMAGE_STATUS.get(row.status, str(row.status)),
            "created": when(row.created_at),
            "layers": len(json.loads(row.layers)) if row.layers else 0,
            "error": row.exception,
        }
        for row in rows
    ]


def build_log(engine: sa.Engine, workspace_id: str, image_id: str) -> str | None:
    i, logs = schema.images, schema.image_build_logs
    with engine.connect() as connection:
        if (
            connection.execute(
                sa.select(i.c.id).where(i.c.id == image_id, i.c.workspace_id == workspace_id)
            ).first()
            is None
        ):
            return None
        rows = connection.execute(
            sa.select(logs.c.data).where(logs.c.image_id == image_id).order_by(logs.c.seq)
        ).all()
    return "".join(row.data for row in rows)


def storage(engine: sa.Engine, workspace_id: str) -> dict[str, list[dict[str, Any]]]:
    """Volumes, dicts, queues and secrets by name, with their sizes; never a secret's value."""
    s = schema.storage_objects
    sizes = {
        "dict": (schema.dict_entries, schema.dict_entries.c.dict_id),
        "queue": (schema.queue_items, schema.queue_items.c.queue_id),
        "volume": (schema.volume_files, schema.volume_files.c.volume_id),
    }
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(s.c.id, s.c.kind, s.c.name, s.c.environment_name, s.c.created_at)
            .where(s.c.workspace_id == workspace_id)
            .order_by(s.c.kind, s.c.name)
        ).all()
        result: dict[str, list[dict[str, Any]]] = {"volume": [], "dict": [], "queue": [], "secret": []}
        for row in rows:
            item: dict[str, Any] = {
                "id": row.id,
                "name": row.name or "(ephemeral)",
                "environment": row.environment_name,
                "created": when(row.created_at),
            }
            if row.kind in sizes:
                table, column = sizes[row.kind]
                item["size"] = connection.execute(
                    sa.select(sa.func.count()).select_from(table).where(column == row.id)
                ).scalar()
            result.setdefault(row.kind, []).append(item)
    return result


def volume_files(engine: sa.Engine, workspace_id: str, volume_id: str) -> list[dict[str, Any]] | None:
    s, v = schema.storage_objects, schema.volume_files
    with engine.connect() as connection:
        owner = connection.execute(
            sa.select(s.c.id).where(
                s.c.id == volume_id, s.c.workspace_id == workspace_id, s.c.kind == "volume"
            )
        ).first()
        if owner is None:
            return None
        rows = connection.execute(
            sa.select(v.c.path, v.c.is_dir, v.c.size, v.c.mtime)
            .where(v.c.volume_id == volume_id)
            .order_by(v.c.path)
            .limit(1000)
        ).all()
    return [
        {"path": row.path, "dir": row.is_dir, "size": row.size, "modified": when(row.mtime)} for row in rows
    ]

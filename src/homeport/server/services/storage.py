"""Named, app-owned and ephemeral storage objects (Dict, Queue, Secret, Volume).

One place decides how a `*GetOrCreate` request resolves (look up, create if missing,
fail if it exists, ephemeral, owned by an app), that names are unique per workspace,
environment and kind, and when unnamed objects expire. The contents of each kind live
in that kind's own service.
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Callable

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport import ids
from homeport.server import errors
from homeport.server.store import schema

KIND_LABEL = {"dict": "Dict", "queue": "Queue", "secret": "Secret", "volume": "Volume"}
# Ephemeral objects are kept while their creator heartbeats (client 1.6.4 sends one every 300 s).
EPHEMERAL_TIMEOUT_S = 900.0
# Every Dict and Queue call checks that its object is there and the caller's (an object's
# kind and workspace never change). `check` answers from what it read at most this long
# ago: a deletion by this server is seen at once, one by another replica within this time
# (as an app's liveness is on the call path).
KNOWN_FOR_S = 1.0

_o = schema.storage_objects
# Built once: every Dict, Queue and Volume call looks its object up with it.
_OBJECT = sa.select(
    _o.c.id, _o.c.kind, _o.c.workspace_id, _o.c.environment_name, _o.c.name, _o.c.created_at
).where(_o.c.id == sa.bindparam("b_id"), _o.c.kind == sa.bindparam("b_kind"))


@dataclasses.dataclass(frozen=True)
class StorageObject:
    id: str
    kind: str
    workspace_id: str
    environment_name: str
    name: str | None
    created_at: float


class StorageObjectService:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._on_delete: dict[str, Callable[[sa.Connection, str], None]] = {}
        self._known: dict[str, tuple[str, str, float]] = {}  # id -> (kind, workspace, read at)

    def on_delete(self, kind: str, remove_contents: Callable[[sa.Connection, str], None]) -> None:
        """Register how a kind's contents are removed along with the object."""
        self._on_delete[kind] = remove_contents

    def get_or_create(
        self,
        kind: str,
        workspace_id: str,
        environment_name: str,
        name: str,
        creation_type: int,
        app_id: str = "",
    ) -> tuple[StorageObject, bool]:
        """Resolve a `*GetOrCreate` request. Returns (object, created)."""
        label = KIND_LABEL[kind]
        now = time.time()
        if creation_type in (
            api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL,
            api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP,
        ):
            if name:
                raise errors.invalid_argument(f"an ephemeral or app-owned {label} has no name (got {name!r})")
            ephemeral = creation_type == api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL
            return self._insert(
                kind, workspace_id, environment_name, None, app_id or None, ephemeral, now
            ), True
        if not name:
            raise errors.invalid_argument(f"a {label} lookup needs a name")
        existing = self.by_name(kind, workspace_id, environment_name, name)
        if existing is not None:
            if creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS:
                raise errors.already_exists(
                    f"{label} '{name}' already exists in environment '{environment_name}'"
                )
            return existing, False
        if creation_type in (
            api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
            api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
            api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS,
        ):
            try:
                return self._insert(kind, workspace_id, environment_name, name, None, False, now), True
            except sa.exc.IntegrityError:  # created concurrently
                found = self.by_name(kind, workspace_id, environment_name, name)
                if found is None:
                    raise
                return found, False
        raise errors.not_found(
            f"{label} '{name}' not found in environment '{environment_name}'; "
            f"create it with `modal {kind} create {name}` or from_name(..., create_if_missing=True)"
        )

    def _insert(
        self,
        kind: str,
        workspace_id: str,
        environment_name: str,
        name: str | None,
        app_id: str | None,
        ephemeral: bool,
        now: float,
    ) -> StorageObject:
        object_id = ids.new_id(kind)
        with self.engine.begin() as connection:
            connection.execute(
                schema.storage_objects.insert().values(
                    id=object_id,
                    kind=kind,
                    workspace_id=workspace_id,
                    environment_name=environment_name,
                    name=name,
                    owner_app_id=app_id,
                    ephemeral=ephemeral,
                    last_heartbeat_at=now,
                    created_at=now,
                )
            )
        return StorageObject(object_id, kind, workspace_id, environment_name, name, now)

    def by_name(self, kind: str, workspace_id: str, environment_name: str, name: str) -> StorageObject | None:
        o = schema.storage_objects
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(
                    o.c.id, o.c.kind, o.c.workspace_id, o.c.environment_name, o.c.name, o.c.created_at
                ).where(
                    o.c.workspace_id == workspace_id,
                    o.c.environment_name == environment_name,
                    o.c.kind == kind,
                    o.c.name == name,
                )
            ).first()
        return StorageObject(*row) if row else None

    def get(self, kind: str, workspace_id: str, object_id: str) -> StorageObject:
        """The object, if it exists and belongs to the caller's workspace; else NOT_FOUND."""
        with self.engine.connect() as connection:
            row = connection.execute(_OBJECT, {"b_id": object_id, "b_kind": kind}).first()
        if row is None or row.workspace_id != workspace_id:
            raise errors.not_found(f"{KIND_LABEL[kind]} {object_id} not found (it may have been deleted)")
        return StorageObject(*row)

    def check(self, kind: str, workspace_id: str, object_id: str) -> str:
        """`get`, for calls that need only know that the object is there and the caller's:
        its id, or NOT_FOUND. Read at most KNOWN_FOR_S ago (the lookup was a tenth of the
        server's py-spy samples under Dict gets and puts)."""
        now = time.monotonic()
        known = self._known.get(object_id)
        if (
            known is not None
            and known[0] == kind
            and known[1] == workspace_id
            and now - known[2] < KNOWN_FOR_S
        ):
            return object_id
        self.get(kind, workspace_id, object_id)
        if len(self._known) > 100_000:
            self._known.clear()
        self._known[object_id] = (kind, workspace_id, now)
        return object_id

    def list(
        self, kind: str, workspace_id: str, environment_name: str, limit: int = 0, created_before: float = 0.0
    ) -> list[StorageObject]:
        o = schema.storage_objects
        query = (
            sa.select(o.c.id, o.c.kind, o.c.workspace_id, o.c.environment_name, o.c.name, o.c.created_at)
            .where(
                o.c.workspace_id == workspace_id,
                o.c.environment_name == environment_name,
                o.c.kind == kind,
                o.c.name.is_not(None),
            )
            .order_by(o.c.created_at.desc())
        )
        if created_before:
            query = query.where(o.c.created_at < created_before)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [StorageObject(*row) for row in connection.execute(query)]

    def delete(self, kind: str, workspace_id: str, object_id: str) -> None:
        self.get(kind, workspace_id, object_id)
        self._delete([object_id], kind)

    def _delete(self, object_ids: builtins.list[str], kind: str) -> None:
        with self.engine.begin() as connection:
            for object_id in object_ids:
                remove = self._on_delete.get(kind)
                if remove is not None:
                    remove(connection, object_id)
                connection.execute(
                    schema.storage_objects.delete().where(schema.storage_objects.c.id == object_id)
                )
        for object_id in object_ids:  # after the commit: a check meanwhile read it still there
            self._known.pop(object_id, None)

    def rename(self, kind: str, workspace_id: str, object_id: str, new_name: str) -> None:
        found = self.get(kind, workspace_id, object_id)
        if not new_name:
            raise errors.invalid_argument(f"a {KIND_LABEL[kind]} needs a non-empty name")
        if self.by_name(kind, workspace_id, found.environment_name, new_name) is not None:
            raise errors.already_exists(f"{KIND_LABEL[kind]} '{new_name}' already exists")
        with self.engine.begin() as connection:
            connection.execute(
                schema.storage_objects.update()
                .where(schema.storage_objects.c.id == object_id)
                .values(name=new_name)
            )

    def heartbeat(self, kind: str, workspace_id: str, object_id: str) -> None:
        self.get(kind, workspace_id, object_id)
        with self.engine.begin() as connection:
            connection.execute(
                schema.storage_objects.update()
                .where(schema.storage_objects.c.id == object_id)
                .values(last_heartbeat_at=time.time())
            )

    def expire(self) -> int:
        """Delete ephemeral objects nobody heartbeats, and objects owned by stopped apps."""
        o, a = schema.storage_objects, schema.apps
        cutoff = time.time() - EPHEMERAL_TIMEOUT_S
        stopped_apps = sa.select(a.c.id).where(a.c.state == api_pb2.APP_STATE_STOPPED)
        condition = sa.or_(
            sa.and_(o.c.ephemeral.is_(True), o.c.last_heartbeat_at < cutoff),
            o.c.owner_app_id.in_(stopped_apps),
        )
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(o.c.id, o.c.kind).where(condition)).all()
        for row in rows:
            self._delete([row.id], row.kind)
        return len(rows)

"""Apps, their functions and classes, and deployments by name."""

from __future__ import annotations

import builtins
import dataclasses
import json
import time

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport import SUPPORTED_CLIENT_VERSION, ids
from homeport.server import errors
from homeport.server.notify import Notifier
from homeport.server.services.autoscaling import autoscaling
from homeport.server.store import schema

LIVE_STATES = (
    api_pb2.APP_STATE_INITIALIZING,
    api_pb2.APP_STATE_EPHEMERAL,
    api_pb2.APP_STATE_DETACHED,
    api_pb2.APP_STATE_DEPLOYED,
)
# An ephemeral app whose client stops heartbeating (every ~15 s) for this long is stopped.
EPHEMERAL_HEARTBEAT_TIMEOUT_S = 90.0


def app_done_key(app_id: str) -> str:
    return f"app-done:{app_id}"


@dataclasses.dataclass(frozen=True)
class AppRow:
    id: str
    workspace_id: str
    environment_name: str
    description: str
    name: str | None
    state: int
    created_at: float
    stopped_at: float | None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


@dataclasses.dataclass(frozen=True)
class FunctionRow:
    id: str
    app_id: str
    tag: str
    definition: api_pb2.Function | None
    handle_metadata: api_pb2.FunctionHandleMetadata
    parent_id: str | None
    bound_params: bytes | None
    options: api_pb2.FunctionOptions | None
    gpu_options: list[tuple[str, int]]  # (model, count) in rank order; empty: no GPU


def _keeps_warm(definition: api_pb2.Function) -> bool:
    return autoscaling(definition, 0).keeps_warm


def _function_row(row: sa.Row) -> FunctionRow:
    definition = None
    if row.definition:
        definition = api_pb2.Function()
        definition.ParseFromString(row.definition)
    metadata = api_pb2.FunctionHandleMetadata()
    if row.handle_metadata:
        metadata.ParseFromString(row.handle_metadata)
    options = None
    if row.options:
        options = api_pb2.FunctionOptions()
        options.ParseFromString(row.options)
    gpu_options = [(o["model"], o["count"]) for o in json.loads(row.gpu_options)] if row.gpu_options else []
    return FunctionRow(
        row.id,
        row.app_id,
        row.tag,
        definition,
        metadata,
        row.parent_id,
        row.bound_params,
        options,
        gpu_options,
    )


APP_CACHE_TTL_S = 1.0
LAYOUTS_KEPT = 1024
# Read on every call of a function (is its app still live?): built once.
_APP_BY_ID = sa.select(
    schema.apps.c.id,
    schema.apps.c.workspace_id,
    schema.apps.c.environment_name,
    schema.apps.c.description,
    schema.apps.c.name,
    schema.apps.c.state,
    schema.apps.c.created_at,
    schema.apps.c.stopped_at,
).where(schema.apps.c.id == sa.bindparam("b_app_id"))


class AppService:
    def __init__(self, engine: sa.Engine, notifier: Notifier) -> None:
        self.engine = engine
        self.notifier = notifier
        # Created functions never change their definition (a redeploy makes new ids), so
        # the hot path (every input and output) reads them from here.
        self._functions: dict[str, FunctionRow] = {}
        self._recent: dict[str, tuple[float, AppRow]] = {}  # get_recent's: (read at, app)
        # layout's: (read at, the serialized AppLayout). Every container start reads its
        # app's layout; this replica's own writes drop it once committed (_changed), and a
        # read that a write overlapped is not kept (on PostgreSQL a read yields to the loop).
        self._layouts: dict[str, tuple[float, bytes]] = {}
        self._layout_changes = 0
        # Whether other replicas may change apps too: then a layout is kept only as long as
        # an app's liveness is (APP_CACHE_TTL_S).
        self.replicated = False

    # --- apps ------------------------------------------------------------------------

    def create(
        self,
        workspace_id: str,
        environment_name: str,
        description: str,
        state: int,
        client_id: str,
        tags: dict[str, str] | None = None,
    ) -> str:
        app_id = ids.new_id("app")
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(
                schema.apps.insert().values(
                    id=app_id,
                    workspace_id=workspace_id,
                    environment_name=environment_name,
                    description=description,
                    state=state or api_pb2.APP_STATE_EPHEMERAL,
                    client_id=client_id,
                    created_at=now,
                    last_heartbeat_at=now,
                    tags=json.dumps(tags or {}),
                )
            )
        return app_id

    def get_recent(self, workspace_id: str, app_id: str) -> AppRow:
        """The app as read at most APP_CACHE_TTL_S ago: for the per-call check that it still
        takes inputs. This server's own stops and redeploys take effect at once; another
        replica's within the TTL."""
        cached = self._recent.get(app_id)
        if cached is not None and time.monotonic() - cached[0] < APP_CACHE_TTL_S:
            if workspace_id and cached[1].workspace_id != workspace_id:
                raise errors.not_found(f"app {app_id} not found")
            return cached[1]
        app = self.get(workspace_id, app_id)
        if len(self._recent) > 10_000:
            self._recent.clear()
        self._recent[app_id] = (time.monotonic(), app)
        return app

    def get(self, workspace_id: str, app_id: str) -> AppRow:
        with self.engine.connect() as connection:
            row = connection.execute(_APP_BY_ID, {"b_app_id": app_id}).first()
        if row is None or (workspace_id and row.workspace_id != workspace_id):
            raise errors.not_found(f"app {app_id} not found")
        return AppRow(*row)

    def deployed_app_id(self, workspace_id: str, environment_name: str, name: str) -> str | None:
        d = schema.deployments
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(d.c.app_id).where(
                    d.c.workspace_id == workspace_id,
                    d.c.environment_name == environment_name,
                    d.c.name == name,
                )
            ).first()
        return str(row.app_id) if row else None

    def require_deployed(self, workspace_id: str, environment_name: str, name: str) -> str:
        app_id = self.deployed_app_id(workspace_id, environment_name, name)
        if app_id is None:
            raise errors.not_found(
                f"app '{name}' not found in environment '{environment_name}'; deploy it with `modal deploy`"
            )
        return app_id

    def heartbeat(self, workspace_id: str, app_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                schema.apps.update()
                .where(schema.apps.c.id == app_id, schema.apps.c.workspace_id == workspace_id)
                .values(last_heartbeat_at=time.time())
            )

    def publish(
        self,
        workspace_id: str,
        app_id: str,
        name: str,
        state: int,
        function_ids: dict[str, str],
        class_ids: dict[str, str],
        deployed_by: str = "",
    ) -> float:
        """Make the app's objects live; a deployment also takes over the name atomically.

        Returns the deployment time (0 when not deploying)."""
        app = self.get(workspace_id, app_id)
        now = time.time()
        previous_app_id = None
        with self.engine.begin() as connection:
            values: dict[str, object] = {"state": state or app.state}
            if state == api_pb2.APP_STATE_DEPLOYED:
                if not name:
                    raise errors.invalid_argument("a deployed app needs a name")
                values.update(name=name, deployed_at=now)
                history = schema.app_deployments
                latest = connection.execute(
                    sa.select(sa.func.max(history.c.version)).where(history.c.app_id == app_id)
                ).scalar()
                connection.execute(
                    history.insert().values(
                        app_id=app_id,
                        version=(latest or 0) + 1,
                        deployed_at=now,
                        client_version=SUPPORTED_CLIENT_VERSION,
                        deployed_by=deployed_by,
                    )
                )
                d = schema.deployments
                existing = connection.execute(
                    sa.select(d.c.app_id).where(
                        d.c.workspace_id == workspace_id,
                        d.c.environment_name == app.environment_name,
                        d.c.name == name,
                    )
                ).first()
                if existing is None:
                    connection.execute(
                        d.insert().values(
                            workspace_id=workspace_id,
                            environment_name=app.environment_name,
                            name=name,
                            app_id=app_id,
                        )
                    )
                elif existing.app_id != app_id:
                    previous_app_id = existing.app_id
                    connection.execute(
                        d.update()
                        .where(
                            d.c.workspace_id == workspace_id,
                            d.c.environment_name == app.environment_name,
                            d.c.name == name,
                        )
                        .values(app_id=app_id)
                    )
            elif name:
                values["name"] = name
            connection.execute(schema.apps.update().where(schema.apps.c.id == app_id).values(**values))
            # The published maps are the source of truth for object tags.
            for tag, function_id in function_ids.items():
                self._functions.pop(function_id, None)
                connection.execute(
                    schema.functions.update()
                    .where(schema.functions.c.id == function_id, schema.functions.c.app_id == app_id)
                    .values(tag=tag)
                )
            for tag, class_id in class_ids.items():
                connection.execute(
                    schema.classes.update()
                    .where(schema.classes.c.id == class_id, schema.classes.c.app_id == app_id)
                    .values(tag=tag)
                )
            if previous_app_id:
                # A redeploy replaces the old version: it stops taking new work.
                connection.execute(
                    schema.apps.update()
                    .where(schema.apps.c.id == previous_app_id)
                    .values(state=api_pb2.APP_STATE_STOPPED, stopped_at=now)
                )
        self._recent.pop(app_id, None)
        self._changed()
        if previous_app_id:
            self._recent.pop(previous_app_id, None)
            self.notifier.notify(app_done_key(previous_app_id))
        return now if state == api_pb2.APP_STATE_DEPLOYED else 0.0

    def layout(self, app_id: str) -> api_pb2.AppLayout:
        """The app's functions and classes, with their handle metadata (a copy: the caller's
        to change)."""
        cached = self._layouts.get(app_id)
        now = time.monotonic()
        if cached is not None and (not self.replicated or now - cached[0] < APP_CACHE_TTL_S):
            return api_pb2.AppLayout.FromString(cached[1])
        changes = self._layout_changes
        layout = api_pb2.AppLayout()
        for function in self.app_functions(app_id):
            layout.objects.add(object_id=function.id, function_handle_metadata=function.handle_metadata)
            layout.function_ids[function.tag] = function.id
        c = schema.classes
        with self.engine.connect() as connection:
            classes = connection.execute(
                sa.select(c.c.id, c.c.tag, c.c.handle_metadata).where(c.c.app_id == app_id)
            ).all()
        for row in classes:
            metadata = api_pb2.ClassHandleMetadata.FromString(row.handle_metadata or b"")
            layout.objects.add(object_id=row.id, class_handle_metadata=metadata)
            layout.class_ids[row.tag] = row.id
        if changes == self._layout_changes:
            if len(self._layouts) >= LAYOUTS_KEPT:
                self._layouts.pop(next(iter(self._layouts)))  # the oldest read
            self._layouts[app_id] = (now, layout.SerializeToString())
        return layout

    def _changed(self) -> None:
        """An app's functions or classes changed here (committed): layouts are read afresh.
        All of them, not only that app's: an existing function or class may be given to
        another app (FunctionCreate and ClassCreate name it by id), and these writes come
        only with deploys."""
        self._layout_changes += 1
        self._layouts.clear()

    def stop(self, app_id: str) -> bool:
        """Stop an app (idempotent). Returns True if it was live."""
        now = time.time()
        self._recent.pop(app_id, None)
        self._layouts.pop(app_id, None)
        with self.engine.begin() as connection:
            result = connection.execute(
                schema.apps.update()
                .where(schema.apps.c.id == app_id, schema.apps.c.state.in_(LIVE_STATES))
                .values(state=api_pb2.APP_STATE_STOPPED, stopped_at=now)
            )
            connection.execute(schema.deployments.delete().where(schema.deployments.c.app_id == app_id))
            connection.execute(schema.web_endpoints.delete().where(schema.web_endpoints.c.app_id == app_id))
        self.notifier.notify(app_done_key(app_id))
        return result.rowcount > 0

    def list(self, workspace_id: str, environment_name: str) -> list[AppRow]:
        a = schema.apps
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(
                    a.c.id,
                    a.c.workspace_id,
                    a.c.environment_name,
                    a.c.description,
                    a.c.name,
                    a.c.state,
                    a.c.created_at,
                    a.c.stopped_at,
                )
                .where(a.c.workspace_id == workspace_id, a.c.environment_name == environment_name)
                .where(sa.or_(a.c.state.in_(LIVE_STATES), a.c.stopped_at > time.time() - 3600))
                .order_by(a.c.created_at)
            )
            return [AppRow(*row) for row in rows]

    def stale_ephemeral_apps(self) -> builtins.list[str]:
        a = schema.apps
        cutoff = time.time() - EPHEMERAL_HEARTBEAT_TIMEOUT_S
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(a.c.id).where(
                    a.c.state.in_((api_pb2.APP_STATE_EPHEMERAL, api_pb2.APP_STATE_INITIALIZING)),
                    a.c.last_heartbeat_at < cutoff,
                )
            )
            return [row.id for row in rows]

    # --- functions and classes ---------------------------------------------------------

    def precreate_function(self, app_id: str, tag: str, existing_function_id: str) -> str:
        function_id = existing_function_id or ids.new_id("function")
        with self.engine.begin() as connection:
            exists = connection.execute(
                sa.select(schema.functions.c.id).where(schema.functions.c.id == function_id)
            ).first()
            if exists is None:
                connection.execute(
                    schema.functions.insert().values(
                        id=function_id, app_id=app_id, tag=tag, created_at=time.time()
                    )
                )
        self._changed()
        return function_id

    def save_function(
        self,
        function_id: str,
        app_id: str,
        tag: str,
        definition: api_pb2.Function,
        metadata: api_pb2.FunctionHandleMetadata,
        schedule_next_at: float | None,
        gpu_options: builtins.list[tuple[str, int]] | None = None,
    ) -> None:
        values = dict(
            keep_warm=_keeps_warm(definition),
            gpu_options=json.dumps([{"model": m, "count": c} for m, c in gpu_options])
            if gpu_options
            else None,
            app_id=app_id,
            tag=tag,
            definition=definition.SerializeToString(),
            handle_metadata=metadata.SerializeToString(),
            schedule_next_at=schedule_next_at,
        )
        self._functions.pop(function_id, None)
        with self.engine.begin() as connection:
            updated = connection.execute(
                schema.functions.update().where(schema.functions.c.id == function_id).values(**values)
            )
            if updated.rowcount == 0:
                connection.execute(
                    schema.functions.insert().values(id=function_id, created_at=time.time(), **values)
                )
        self._changed()

    def function(self, function_id: str) -> FunctionRow:
        cached = self._functions.get(function_id)
        if cached is not None:
            return cached
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(schema.functions).where(schema.functions.c.id == function_id)
            ).first()
        if row is None:
            raise errors.not_found(f"function {function_id} not found")
        function = _function_row(row)
        if function.definition is not None or function.parent_id is not None:
            self._functions[function_id] = function
        return function

    def function_by_tag(self, app_id: str, tag: str) -> FunctionRow | None:
        f = schema.functions
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(f).where(f.c.app_id == app_id, f.c.tag == tag, f.c.parent_id.is_(None))
            ).first()
        return _function_row(row) if row else None

    def app_functions(self, app_id: str) -> builtins.list[FunctionRow]:
        f = schema.functions
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(f).where(f.c.app_id == app_id, f.c.parent_id.is_(None)))
            return [_function_row(row) for row in rows]

    def bind_function(
        self, parent: FunctionRow, serialized_params: bytes, options: api_pb2.FunctionOptions | None
    ) -> str:
        function_id = ids.new_id("function")
        with self.engine.begin() as connection:
            connection.execute(
                schema.functions.insert().values(
                    id=function_id,
                    app_id=parent.app_id,
                    tag=parent.tag,
                    definition=None,
                    handle_metadata=parent.handle_metadata.SerializeToString(),
                    parent_id=parent.id,
                    bound_params=serialized_params,
                    options=options.SerializeToString() if options is not None else None,
                    created_at=time.time(),
                    # with_options(buffer_containers=...): the variant keeps containers of its own
                    keep_warm=options is not None
                    and bool(options.buffer_containers or options.warm_pool_size),
                )
            )
        return function_id

    def create_class(self, app_id: str, class_id: str, tag: str, function_id: str, metadata: bytes) -> str:
        class_id = class_id or ids.new_id("class")
        with self.engine.begin() as connection:
            connection.execute(schema.classes.delete().where(schema.classes.c.id == class_id))
            connection.execute(
                schema.classes.insert().values(
                    id=class_id,
                    app_id=app_id,
                    tag=tag,
                    function_id=function_id,
                    handle_metadata=metadata,
                    created_at=time.time(),
                )
            )
        self._changed()
        return class_id

    def class_by_tag(self, app_id: str, tag: str) -> tuple[str, bytes] | None:
        c = schema.classes
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(c.c.id, c.c.handle_metadata).where(c.c.app_id == app_id, c.c.tag == tag)
            ).first()
        return (row.id, row.handle_metadata or b"") if row else None

    def update_definition(self, function_id: str, definition: api_pb2.Function) -> None:
        """A live change to a function's definition (update_autoscaler)."""
        self._functions.pop(function_id, None)
        with self.engine.begin() as connection:
            connection.execute(
                schema.functions.update()
                .where(schema.functions.c.id == function_id)
                .values(definition=definition.SerializeToString(), keep_warm=_keeps_warm(definition))
            )

    def warm_functions(self) -> builtins.list[str]:
        """Functions of live apps that keep containers without inputs (min/buffer containers)."""
        f, a = schema.functions, schema.apps
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(f.c.id)
                .join(a, a.c.id == f.c.app_id)
                .where(f.c.keep_warm.is_(True), a.c.state.in_(LIVE_STATES))
            )
            return [row.id for row in rows]

    def due_schedules(self, now: float) -> builtins.list[FunctionRow]:
        f, a = schema.functions, schema.apps
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(f)
                .join(a, a.c.id == f.c.app_id)
                .where(
                    f.c.schedule_next_at.is_not(None),
                    f.c.schedule_next_at <= now,
                    # As on Modal, schedules also fire while an app run with `modal run`,
                    # `modal serve` or `app.run()` is up, and stop with it.
                    a.c.state.in_(LIVE_STATES),
                )
            )
            return [_function_row(row) for row in rows]

    def set_schedule_next(self, function_id: str, next_at: float) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                schema.functions.update()
                .where(schema.functions.c.id == function_id)
                .values(schedule_next_at=next_at)
            )

    def deployment_history(self, app_id: str) -> builtins.list[sa.Row]:
        """Every deployment of an app, newest first."""
        history = schema.app_deployments
        with self.engine.connect() as connection:
            return builtins.list(
                connection.execute(
                    sa.select(history).where(history.c.app_id == app_id).order_by(history.c.version.desc())
                ).all()
            )

    def tags(self, app_id: str) -> dict[str, str]:
        a = schema.apps
        with self.engine.connect() as connection:
            raw = connection.execute(sa.select(a.c.tags).where(a.c.id == app_id)).scalar()
        return dict(json.loads(raw or "{}"))

    def set_tags(self, app_id: str, tags: dict[str, str]) -> None:
        """Add or change these tags; the others stay."""
        a = schema.apps
        with self.engine.begin() as connection:
            raw = connection.execute(sa.select(a.c.tags).where(a.c.id == app_id)).scalar()
            merged = {**json.loads(raw or "{}"), **tags}
            connection.execute(a.update().where(a.c.id == app_id).values(tags=json.dumps(merged)))

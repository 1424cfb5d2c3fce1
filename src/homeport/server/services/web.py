"""Web endpoint names: which hostname label reaches which function (or class method).

A URL is `<scheme>://<workspace>--<label>.<domain>[:port]/...`; the label is the
decorator's `label=` or `<app>-<function>` (`<app>-<class>-<method>`), lower-cased to
what a hostname allows. The newest registration of a label wins (a redeploy takes over
its URL); a stopped app's labels are released.
"""

from __future__ import annotations

import dataclasses
import re

import sqlalchemy as sa

from homeport.server import errors
from homeport.server.store import db, schema

w = schema.web_endpoints
# Built once: every request through the gateway resolves its host with it.
_ENDPOINT = sa.select(
    w.c.host_label, w.c.workspace_id, w.c.app_id, w.c.function_id, w.c.method_name, w.c.requires_proxy_auth
).where(w.c.host_label == sa.bindparam("b_label"))
MAX_LABEL = 63  # one DNS label


def sanitize(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", label)


def host_label(
    workspace_name: str, app_name: str, function_tag: str, requested: str, suffix: str = ""
) -> str:
    if requested:
        if sanitize(requested) != requested:
            raise errors.invalid_argument(
                f"web endpoint label {requested!r} may contain only lower-case letters, digits and '-'"
            )
        label = requested
    else:
        label = sanitize(f"{app_name}-{function_tag.replace('.', '-')}")
    if suffix:
        label = f"{label}-{sanitize(suffix)}"
    full = f"{sanitize(workspace_name)}--{label}"
    return full[:MAX_LABEL].rstrip("-")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    host_label: str
    workspace_id: str
    app_id: str
    function_id: str
    method_name: str
    requires_proxy_auth: bool


class WebEndpointService:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def register(self, endpoint: Endpoint) -> None:
        db.once_more_on_conflict(lambda: self._register(endpoint))

    def _register(self, endpoint: Endpoint) -> None:
        with self.engine.begin() as connection:
            connection.execute(w.delete().where(w.c.host_label == endpoint.host_label))
            connection.execute(w.insert().values(**dataclasses.asdict(endpoint)))

    def resolve(self, label: str) -> Endpoint | None:
        with self.engine.connect() as connection:
            row = connection.execute(_ENDPOINT, {"b_label": label}).first()
        return Endpoint(*row) if row else None

    def release_app(self, app_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(w.delete().where(w.c.app_id == app_id))

"""Who is calling: the per-request identity every handler receives."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from homeport.server.errors import permission_denied

if TYPE_CHECKING:
    from homeport.server.state import ServerState


@dataclasses.dataclass(frozen=True)
class TaskIdentity:
    task_id: str
    app_id: str
    function_id: str


@dataclasses.dataclass
class RequestContext:
    state: ServerState
    request_id: str
    workspace_id: str
    token_id: str | None = None  # a user's token
    task: TaskIdentity | None = None  # a container's own credential
    idempotency_key: str = ""

    def require_task(self) -> TaskIdentity:
        if self.task is None:
            raise permission_denied("this RPC is only for containers")
        return self.task

    def environment(self, requested: str) -> str:
        return requested or "main"

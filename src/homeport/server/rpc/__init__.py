"""RPC handlers, one module per domain. Each handler decodes a request, calls a service,
and encodes the answer; `handler` registers it under the client's RPC name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[..., Awaitable[Any]]
HANDLERS: dict[str, Handler] = {}


def handler(rpc_name: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        if rpc_name in HANDLERS:
            raise RuntimeError(f"two handlers registered for {rpc_name}")
        HANDLERS[rpc_name] = function
        return function

    return register


def load_all() -> dict[str, Handler]:
    """Import every domain module so their handlers register, then return the table."""
    from homeport.server.rpc import (  # noqa: F401
        apps,
        billing,
        blobs,
        calls,
        containers,
        dashboard,
        dicts,
        environments,
        functions,
        images,
        inspection,
        logs,
        mounts,
        queues,
        sandboxes,
        sandboxes_v1,
        secrets,
        volumes,
    )

    return HANDLERS

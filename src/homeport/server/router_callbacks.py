"""What a cluster node's task command router asks of the control plane (agent/node_router.py),
over the HTTP listener: the environment of an exec that names Secrets, and recording the
image a filesystem snapshot makes. Each request carries the client's own router credential
for one sandbox task (checked here as the router checked it), and answers for that task
only, in its sandbox's workspace: a credential cannot reach another sandbox's secrets.
"""

from __future__ import annotations

import logging

from aiohttp import web
from grpclib import GRPCError, Status
from modal_proto import api_pb2

from homeport.agent.router import RouterCredentials
from homeport.server.sandboxes import Sandboxes

log = logging.getLogger("homeport.sandboxes")

PREFIX = "/_homeport/router"
_STATUS = {"UNAUTHENTICATED": 401, "NOT_FOUND": 404, "FAILED_PRECONDITION": 409, "INVALID_ARGUMENT": 400}


def router_callback_routes(credentials: RouterCredentials, sandboxes: Sandboxes) -> list[web.RouteDef]:
    def failure(error: GRPCError) -> web.Response:
        return web.json_response(
            {"error": error.message or error.status.name}, status=_STATUS.get(error.status.name, 500)
        )

    async def task_and_body(request: web.Request) -> tuple[str, dict]:  # type: ignore[type-arg]
        header = request.headers.get("authorization", "")
        task_id = credentials.task_id(header[len("Bearer ") :] if header.startswith("Bearer ") else "")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise GRPCError(Status.INVALID_ARGUMENT, "the body must be a JSON object")
        return task_id, body

    async def environment(request: web.Request) -> web.Response:
        try:
            task_id, body = await task_and_body(request)
            sources = [
                api_pb2.SecretSource(secret_id=str(source["secret_id"]))
                if "secret_id" in source
                else api_pb2.SecretSource(env=api_pb2.StringMap(contents=dict(source.get("env", {}))))
                for source in body.get("sources", [])
            ]
            values = await sandboxes.exec_environment(task_id, sources)
        except GRPCError as error:
            return failure(error)
        return web.json_response({"environment": values})

    async def snapshot(request: web.Request) -> web.Response:
        try:
            task_id, body = await task_and_body(request)
            image_id = await sandboxes.snapshot_filesystem(task_id, str(body.get("snapshot_id", "")))
        except GRPCError as error:
            return failure(error)
        except (LookupError, RuntimeError) as error:
            return web.json_response({"error": f"the filesystem snapshot failed: {error}"}, status=409)
        return web.json_response({"image_id": image_id})

    return [web.post(f"{PREFIX}/environment", environment), web.post(f"{PREFIX}/snapshot", snapshot)]

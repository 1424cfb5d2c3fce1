"""The gRPC surface: maps every RPC of the client's `ModalClient` service to a handler.

Every call is authenticated from its metadata before its body is read (a user token, or
a container's own credential), checked for a supported client version, has every object
id it names checked against the caller's workspace (`ownership`), and is wrapped so that a failing handler is logged with
its request id and answered INTERNAL instead of crashing the server. RPCs without a
handler answer UNIMPLEMENTED with a message naming them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const
import sqlalchemy as sa
from grpclib import GRPCError, Status
from grpclib.exceptions import StreamTerminatedError
from grpclib.server import Stream
from h2.exceptions import StreamClosedError
from modal_proto import api_grpc

from homeport import SUPPORTED_CLIENT_VERSION, ids
from homeport.server import errors
from homeport.server.connections import read_request
from homeport.server.context import RequestContext
from homeport.server.rpc import load_all
from homeport.server.state import ServerState

log = logging.getLogger("homeport.rpc")

# Raised when answering a caller that has already gone (a container that was killed,
# a client that hung up).
CALLER_GONE = (StreamTerminatedError, StreamClosedError, ConnectionError)

# How long a request waits out an unreachable database before answering UNAVAILABLE.
# Client 1.6.4 retries UNAVAILABLE only 3 times, within about 0.7 s (grpc_utils.Retry's
# defaults), far less than a PostgreSQL restart takes. A server-side retry policy (an
# RPCRetryPolicy in the error details) would need googleapis-common-protos on both ends,
# and the client does not install it. So the server waits and runs the handler again
# itself: the same as a retry by the client, which every handler already tolerates.
DATABASE_PATIENCE_S = 30.0

# The client calls these before it has (or without needing) credentials.
UNAUTHENTICATED_RPCS = {"ClientHello", "TokenFlowCreate", "TokenFlowWait"}


class _HandlerCollector:
    """Stands in for `self` when asking the generated base class for its route table."""

    def __getattr__(self, name: str) -> str:
        return name


class HomeportServicer:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.handlers = load_all()
        self.ownership = state.ownership

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        routes = api_grpc.ModalClientBase.__mapping__(_HandlerCollector())  # type: ignore[arg-type]
        return {
            path: grpclib.const.Handler(
                self._endpoint(route.func, route.cardinality),
                route.cardinality,
                route.request_type,
                route.reply_type,
            )
            for path, route in routes.items()
        }

    def _endpoint(self, rpc_name: str, cardinality: grpclib.const.Cardinality) -> Callable[[Stream], Any]:
        handler = self.handlers.get(rpc_name)
        streams_reply = cardinality in (
            grpclib.const.Cardinality.UNARY_STREAM,
            grpclib.const.Cardinality.STREAM_STREAM,
        )

        async def endpoint(stream: Stream) -> None:
            request_id = ids.new_id("request")
            started = time.monotonic()
            try:
                if handler is None:
                    raise errors.unimplemented(rpc_name)
                context = self._authenticate(rpc_name, request_id, stream.metadata or {})
                request = await read_request(stream, rpc_name)
                if context.workspace_id:
                    self.ownership.check(context.workspace_id, request)
                if streams_reply:
                    sent = False

                    async def send(message: Any) -> None:
                        nonlocal sent
                        sent = True
                        await stream.send_message(message)

                    await self._patiently(
                        rpc_name,
                        request_id,
                        stream,
                        lambda: handler(context, request, send),
                        lambda: not sent,
                    )
                else:
                    response = await self._patiently(
                        rpc_name, request_id, stream, lambda: handler(context, request), lambda: True
                    )
                    try:
                        await stream.send_message(response)
                    except CALLER_GONE:
                        # The caller went away before the answer reached it; a handler that
                        # handed out work (inputs) takes it back.
                        undelivered = getattr(handler, "on_undelivered", None)
                        if undelivered is not None:
                            undelivered(context, request, response)
                        raise
            except GRPCError as error:
                if error.status in (
                    Status.INVALID_ARGUMENT,
                    Status.RESOURCE_EXHAUSTED,
                    Status.UNAUTHENTICATED,
                ):
                    log.info("request %s (%s) refused: %s", request_id, rpc_name, error.message)
                raise
            except CALLER_GONE:
                log.debug("request %s (%s): the caller went away", request_id, rpc_name)
                # grpclib cancels a request whose stream the caller reset, and expects its
                # task to end cancelled; ending quietly instead makes it log an ERROR.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None
            except sa.exc.OperationalError as error:
                # The database stayed away longer than DATABASE_PATIENCE_S (or the answer
                # had begun streaming): the client retries UNAVAILABLE by itself.
                log.warning(
                    "request %s (%s): the database is unreachable: %s", request_id, rpc_name, error.orig
                )
                raise GRPCError(
                    Status.UNAVAILABLE, "the server's database is unreachable for a moment; retry"
                )
            except Exception:
                log.exception("request %s (%s) failed", request_id, rpc_name)
                raise GRPCError(Status.INTERNAL, f"internal error in {rpc_name} (request {request_id})")
            finally:
                elapsed_ms = (time.monotonic() - started) * 1000
                if elapsed_ms > 1000 and rpc_name not in LONG_POLL_RPCS:
                    log.info("slow rpc %s took %.0f ms (request %s)", rpc_name, elapsed_ms, request_id)

        return endpoint

    async def _patiently(
        self,
        rpc_name: str,
        request_id: str,
        stream: Stream,
        attempt: Callable[[], Awaitable[Any]],
        may_run_again: Callable[[], bool],
    ) -> Any:
        """Run a handler; while the database is unreachable (a PostgreSQL restart: the
        pool's connections fail, then new ones are refused for a while), wait and run it
        again, up to DATABASE_PATIENCE_S or the caller's deadline."""
        first_failure: float | None = None
        delay = 0.1
        while True:
            try:
                return await attempt()
            except sa.exc.OperationalError as error:
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                    log.warning(
                        "request %s (%s): the database is unreachable (%s); waiting for it",
                        request_id, rpc_name, error.orig,
                    )  # fmt: skip
                out_of_time = now + delay - first_failure > DATABASE_PATIENCE_S
                deadline = stream.deadline
                if deadline is not None and deadline.time_remaining() < delay:
                    out_of_time = True
                if out_of_time or not may_run_again():
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _authenticate(self, rpc_name: str, request_id: str, metadata: Any) -> RequestContext:
        version = metadata.get("x-modal-client-version", "")
        if version != SUPPORTED_CLIENT_VERSION:
            raise errors.failed_precondition(
                f"modal client version {version or '(none)'} is not supported by this Homeport server; "
                f"install the supported version with `pip install modal=={SUPPORTED_CLIENT_VERSION}`"
            )
        idempotency_key = metadata.get("x-idempotency-key", "")
        task_id = metadata.get("x-homeport-task-id")
        if task_id:
            task = self.state.auth.verify_task(task_id, metadata.get("x-homeport-task-secret", ""))
            return RequestContext(
                self.state, request_id, task.workspace_id, task=task.identity, idempotency_key=idempotency_key
            )
        token_id = metadata.get("x-modal-token-id", "")
        token_secret = metadata.get("x-modal-token-secret", "")
        if not token_id and rpc_name in UNAUTHENTICATED_RPCS:
            return RequestContext(self.state, request_id, workspace_id="")
        workspace_id = self.state.auth.verify_token(token_id, token_secret)
        return RequestContext(
            self.state, request_id, workspace_id, token_id=token_id, idempotency_key=idempotency_key
        )


LONG_POLL_RPCS = {
    "AppGetLogs",
    "FunctionGetInputs",
    "FunctionGetOutputs",
    "ImageJoinStreaming",
    "FunctionCallGetDataOut",
    "FunctionCallGetDataIn",
    "AppHeartbeat",
    "SandboxWaitV2",
}

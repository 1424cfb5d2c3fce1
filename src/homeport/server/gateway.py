"""The web gateway: plain HTTP in, ASGI over a function call's data channels out.

One HTTP request is one function call. Its input is the pickled `((scope,), {})`; the
request body goes in as `http.request` messages on the call's data-in channel (written
before the input is queued: the container waits only 5 s for the first one), and the
container's `http.response.*` messages come back on data-out and are streamed to the
client as they arrive. Bodies are never held whole: chunks flow through the database
in pieces of at most 1 MiB.
"""

from __future__ import annotations

import asyncio
import html
import logging
import pickle
import time

from aiohttp import web
from modal_proto import api_pb2

from homeport.server.notify import poll
from homeport.server.services.calls import data_key, outputs_key
from homeport.server.state import ServerState

log = logging.getLogger("homeport.gateway")

BODY_CHUNK = 1024 * 1024
DEFAULT_TIMEOUT_S = 300
GENERIC = api_pb2.GenericResult
_FINISHED = object()  # the call has ended and every message it sent was read


def _page(status: int, title: str, detail: str) -> web.Response:
    body = f"<!doctype html><title>{status} {html.escape(title)}</title><h1>{status} {html.escape(title)}</h1><p>{html.escape(detail)}</p>\n"
    return web.Response(status=status, text=body, content_type="text/html")


def _asgi_chunk(index: int, message: api_pb2.Asgi) -> api_pb2.DataChunk:
    return api_pb2.DataChunk(
        data_format=api_pb2.DATA_FORMAT_ASGI, data=message.SerializeToString(), index=index
    )


class Gateway:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.suffix = "." + state.settings.web_domain

    def host_label(self, request: web.Request) -> str | None:
        host = (request.headers.get("Host") or "").split(":")[0].lower()
        if host.endswith(self.suffix) and host != self.suffix[1:]:
            label = host[: -len(self.suffix)]
            return label if "." not in label else None
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        label = self.host_label(request)
        assert label is not None
        state = self.state
        endpoint = state.web.resolve(label)
        if endpoint is None:
            return _page(404, "Not Found", f"No web endpoint is served at {request.host}.")
        if endpoint.requires_proxy_auth and not state.auth.verify_proxy_token(
            endpoint.workspace_id,
            request.headers.get("Modal-Key", ""),
            request.headers.get("Modal-Secret", ""),
        ):
            return _page(401, "Unauthorized", "This endpoint needs valid Modal-Key and Modal-Secret headers.")
        function = state.apps.function(endpoint.function_id)
        definition = function.definition or api_pb2.Function()
        timeout = definition.timeout_secs or DEFAULT_TIMEOUT_S
        call_id = state.calls.create_call(
            endpoint.workspace_id,
            function.id,
            function.app_id,
            api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC,
            api_pb2.FUNCTION_CALL_TYPE_UNARY,
        )
        try:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await self._websocket(request, call_id, function.id, endpoint.method_name)
            return await self._exchange(request, call_id, function.id, endpoint.method_name, timeout)
        finally:
            state.calls.drop_data(call_id)

    async def _exchange(
        self, request: web.Request, call_id: str, function_id: str, method_name: str, timeout: float
    ) -> web.StreamResponse:
        state = self.state
        first = await request.content.read(BODY_CHUNK) if request.can_read_body else b""
        more = request.can_read_body and not request.content.at_eof()
        state.calls.put_data(
            call_id,
            "in",
            [_asgi_chunk(1, api_pb2.Asgi(http_request=api_pb2.Asgi.HttpRequest(body=first, more_body=more)))],
        )
        scope = self._scope(request)
        state.calls.enqueue(
            call_id,
            function_id,
            [
                (
                    0,
                    api_pb2.FunctionInput(
                        args=pickle.dumps(((scope,), {})),
                        data_format=api_pb2.DATA_FORMAT_PICKLE,
                        method_name=method_name,
                    ),
                )
            ],
        )
        state.scheduler.inputs_queued(function_id, 1)
        async with asyncio.TaskGroup() as group:
            uploader = group.create_task(self._upload_rest(request, call_id, more))
            try:
                return await asyncio.wait_for(self._download(request, call_id), timeout=timeout + 5)
            except TimeoutError:
                await state.scheduler.cancel_call(call_id, terminate_containers=False)
                return _page(
                    504, "Gateway Timeout", f"The function did not answer within its timeout of {timeout} s."
                )
            finally:
                if not uploader.done():
                    uploader.cancel()

    async def _upload_rest(self, request: web.Request, call_id: str, more: bool) -> None:
        index = 1
        while more:
            chunk = await request.content.read(BODY_CHUNK)
            more = not request.content.at_eof()
            index += 1
            message = api_pb2.Asgi(http_request=api_pb2.Asgi.HttpRequest(body=chunk, more_body=more))
            self.state.calls.put_data(call_id, "in", [_asgi_chunk(index, message)])

    async def _download(self, request: web.Request, call_id: str) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        async for message in self._messages_out(call_id):
            kind = message.WhichOneof("type")
            if kind == "http_response_start" and response is None:
                start = message.http_response_start
                response = web.StreamResponse(status=start.status)
                for i in range(0, len(start.headers) - 1, 2):
                    name, value = start.headers[i].decode("latin-1"), start.headers[i + 1].decode("latin-1")
                    if name.lower() == "content-length":
                        response.content_length = int(value)
                    elif name.lower() not in ("transfer-encoding", "connection"):
                        response.headers.add(name, value)
                await response.prepare(request)
            elif kind == "http_response_body" and response is not None:
                await response.write(message.http_response_body.body)
                if not message.http_response_body.more_body:
                    await response.write_eof()
                    return response
        return await self._finish_without_body(request, response, call_id)

    async def _finish_without_body(
        self, request: web.Request, response: web.StreamResponse | None, call_id: str
    ) -> web.StreamResponse:
        outputs = self.state.calls.outputs_after(call_id, 0, 1)
        result = outputs[0].result if outputs else GENERIC(status=GENERIC.GENERIC_STATUS_FAILURE)
        if response is not None:
            await response.write_eof()
            return response
        if result.status == GENERIC.GENERIC_STATUS_TIMEOUT:
            return _page(504, "Gateway Timeout", "The function timed out before it answered.")
        if result.status == GENERIC.GENERIC_STATUS_INIT_FAILURE:
            return _page(503, "Service Unavailable", f"No container could start: {result.exception}")
        if result.status == GENERIC.GENERIC_STATUS_SUCCESS:
            return _page(502, "Bad Gateway", "The function ended without sending a response.")
        # The traceback is in the app's logs, not in the response.
        return _page(500, "Internal Server Error", "The function raised an exception; see `modal app logs`.")

    async def _websocket(
        self, request: web.Request, call_id: str, function_id: str, method_name: str
    ) -> web.StreamResponse:
        """A WebSocket: `websocket.connect` in first, then frames both ways until either
        side closes. The call lives as long as the connection."""
        state = self.state
        state.calls.put_data(
            call_id, "in", [_asgi_chunk(1, api_pb2.Asgi(websocket_connect=api_pb2.Asgi.WebsocketConnect()))]
        )
        scope = self._scope(request)
        scope.update(type="websocket", scheme="wss" if request.secure else "ws")
        scope.pop("method", None)
        scope["subprotocols"] = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
        ]
        state.calls.enqueue(
            call_id,
            function_id,
            [
                (
                    0,
                    api_pb2.FunctionInput(
                        args=pickle.dumps(((scope,), {})),
                        data_format=api_pb2.DATA_FORMAT_PICKLE,
                        method_name=method_name,
                    ),
                )
            ],
        )
        state.scheduler.inputs_queued(function_id, 1)
        messages = self._messages_out(call_id)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("type") != "websocket_accept":
            await state.scheduler.cancel_call(call_id, terminate_containers=False)
            return _page(403, "Forbidden", "The endpoint did not accept the WebSocket.")
        accept = first.websocket_accept
        socket = web.WebSocketResponse(
            protocols=[accept.subprotocol] if accept.HasField("subprotocol") else ()
        )
        await socket.prepare(request)
        index = 1

        async def client_to_container() -> None:
            nonlocal index
            async for frame in socket:
                index += 1
                if frame.type == web.WSMsgType.TEXT:
                    message = api_pb2.Asgi(websocket_receive=api_pb2.Asgi.WebsocketReceive(text=frame.data))
                elif frame.type == web.WSMsgType.BINARY:
                    message = api_pb2.Asgi(websocket_receive=api_pb2.Asgi.WebsocketReceive(bytes=frame.data))
                else:
                    break
                state.calls.put_data(call_id, "in", [_asgi_chunk(index, message)])
            index += 1
            disconnect = api_pb2.Asgi(
                websocket_disconnect=api_pb2.Asgi.WebsocketDisconnect(code=socket.close_code or 1000)
            )
            state.calls.put_data(call_id, "in", [_asgi_chunk(index, disconnect)])

        async def container_to_client() -> None:
            async for message in messages:
                kind = message.WhichOneof("type")
                if kind == "websocket_send":
                    content = message.websocket_send
                    if content.WhichOneof("content") == "text":
                        await socket.send_str(content.text)
                    else:
                        await socket.send_bytes(content.bytes)
                elif kind == "websocket_close":
                    close = message.websocket_close
                    await socket.close(
                        code=close.code if close.HasField("code") else 1000, message=close.reason.encode()
                    )
                    return
            await socket.close()

        async with asyncio.TaskGroup() as group:
            inbound = group.create_task(client_to_container())
            outbound = group.create_task(container_to_client())
            await asyncio.wait([inbound, outbound], return_when=asyncio.FIRST_COMPLETED)
            if outbound.done() and not inbound.done():
                inbound.cancel()
        return socket

    async def _messages_out(self, call_id: str):  # type: ignore[no-untyped-def]
        """The container's ASGI messages for a call, in order, until the call has finished
        (the container flushes its data before its output, so nothing comes after)."""
        state = self.state
        last_index = 0

        def fetch() -> list[api_pb2.DataChunk] | object | None:
            chunks = state.calls.data_after(call_id, "out", last_index)
            if chunks or state.calls.unfinished_count(call_id):
                return chunks
            return state.calls.data_after(call_id, "out", last_index) or _FINISHED

        while True:
            found = await poll(state.notifier, [data_key(call_id, "out"), outputs_key(call_id)], fetch, 30.0)
            if found is _FINISHED:
                return
            for chunk in found:
                last_index = chunk.index
                message = api_pb2.Asgi()
                message.ParseFromString(
                    state.blobs.read_bytes(chunk.data_blob_id) if chunk.data_blob_id else chunk.data
                )
                yield message

    def _scope(self, request: web.Request) -> dict:  # type: ignore[type-arg]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": f"{request.version.major}.{request.version.minor}",
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "raw_path": request.raw_path.split("?", 1)[0].encode(),
            "query_string": request.query_string.encode(),
            "root_path": "",
            "headers": [
                [name.lower().encode("latin-1"), value.encode("latin-1")]
                for name, value in request.headers.items()
            ],
            "server": [request.host.split(":")[0], request.url.port or 80],
        }
        if peer:
            scope["client"] = [peer[0], peer[1]]
        return scope


def gateway_middleware(gateway: Gateway):  # type: ignore[no-untyped-def]
    """Requests for `<label>.<web domain>` go to the gateway; everything else (blob URLs)
    to the listener's own routes."""

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        label = gateway.host_label(request)
        if label is not None:
            started = time.monotonic()
            response = await gateway.handle(request)
            elapsed = time.monotonic() - started
            log.debug("%s %s -> %s in %.1f ms", request.method, request.path, response.status, elapsed * 1000)
            # Labels are "<workspace>--<endpoint>"; unknown hosts are counted together.
            workspace, _, endpoint = (
                label.partition("--") if response.status != 404 else ("", "", "(unknown)")
            )
            gateway.state.metrics.http_request(workspace, endpoint or label, response.status, elapsed)
            return response
        return await handler(request)

    return middleware

"""ASGI middlewares: the request context (correlation id, latency metrics) and the body size limit."""

from __future__ import annotations

import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import LATENCY, REQUESTS
from constellation_core.logs import correlation_id

REQUEST_ID_HEADER = b"x-request-id"


class RequestContextMiddleware:
    """Sets the correlation id (from X-Request-ID, or a new one), echoes it, and records metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"").decode("latin-1")[:64]
        token = correlation_id.set(incoming or uuid.uuid4().hex)
        started = time.perf_counter()
        status_code = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, correlation_id.get().encode())]
            await send(message)

        try:
            # A socket's messages go straight through: only an HTTP response carries the id header.
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
        finally:
            if scope["type"] == "http":
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                REQUESTS.labels(scope["method"], path, str(status_code)).inc()
                LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)
            correlation_id.reset(token)


# What browsers and proxies allow (nginx: 4 × 8 KiB buffers); a key or a cookie is far below it.
MAX_HEADER_BYTES = 16 * 1024


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413 problem+json, before the app reads them: by the
    declared Content-Length, or for a chunked body (no length) by reading it here, up to the limit.
    Headers over `max_header_bytes` in all get 431 (WebSocket handshakes are refused the same way)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and sum(
            len(k) + len(v) for k, v in scope["headers"]
        ) > self.max_header_bytes:
            await self._refuse_headers(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server stops a body at its declared length
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            await self.app(scope, receive, send)
            return
        # Chunked: no length up front. Read it here (at most max_bytes + one chunk), then hand it on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse_headers(self, scope: Scope, receive: Receive, send: Send) -> None:
        from api.errors import problem_response

        response = problem_response(431, "Request header fields too large",
                                    f"request headers are limited to {self.max_header_bytes} bytes in all",
                                    instance=scope["path"])
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            if "websocket.http.response" not in scope.get("extensions", {}):
                await send({"type": "websocket.close", "code": 1008, "reason": "request headers too large"})
                return
            await send({"type": "websocket.http.response.start", "status": 431, "headers": response.raw_headers})
            await send({"type": "websocket.http.response.body", "body": response.body})
            return
        await response(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        from api.errors import problem_response

        response = problem_response(
            413, "Payload too large", f"request bodies are limited to {self.max_bytes} bytes", instance=scope["path"]
        )
        await response(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives these messages first, then the real ones (a disconnect, later)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed

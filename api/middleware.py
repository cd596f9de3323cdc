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
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == "http":
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                REQUESTS.labels(scope["method"], path, str(status_code)).inc()
                LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)
            correlation_id.reset(token)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413 problem+json, before the app reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        from api.errors import problem_response

        response = problem_response(
            413, "Payload too large", f"request bodies are limited to {self.max_bytes} bytes", instance=scope["path"]
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass

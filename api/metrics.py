"""Prometheus metrics and the request-context middleware (correlation id, latency)."""

from __future__ import annotations

import time
import uuid

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from constellation_core.logs import correlation_id

REQUESTS = Counter("constellation_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "constellation_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JOBS_SUBMITTED = Counter("constellation_jobs_submitted_total", "Jobs accepted by POST /jobs")
STREAM_CLIENTS = Gauge("constellation_stream_clients", "Connected WebSocket stream clients")
STREAM_DROPPED = Counter("constellation_stream_clients_dropped_total", "Stream clients dropped for being too slow")

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

"""POST /traces: the dashboard's browser spans, handed on to the trace store.

A browser cannot reach the trace store (another port, no CORS there, and its key must not leave the
API's origin), so the dashboard exports its spans (OTLP/HTTP, JSON or protobuf) here, with the
user's key, and the API relays them to the OTLP endpoint its own spans go to. With tracing off the
spans are dropped (202 all the same: a browser has nothing to retry).
"""

from __future__ import annotations

import os

import httpx
from fastapi import APIRouter, Request, Response, status

from api.deps import CurrentAccount
from api.errors import ServiceUnavailable, UnsupportedMediaType
from constellation_core.tracing import enabled_by_environment

router = APIRouter(tags=["traces"])
OTLP_TYPES = ("application/json", "application/x-protobuf")


def otlp_traces_url() -> str | None:
    if not enabled_by_environment():
        return None
    if url := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return url
    return os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"


@router.post(
    "/traces", status_code=status.HTTP_202_ACCEPTED, name="export", response_class=Response,
    responses={415: {"description": "Not an OTLP body"}, 503: {"description": "The trace store did not take them"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "description": "An OTLP ExportTraceServiceRequest"}},
        "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
    }}},
)
async def export_traces(request: Request, account: CurrentAccount) -> Response:
    """Spans recorded by the dashboard (an OTLP/HTTP `ExportTraceServiceRequest`), relayed to the trace store."""
    media = request.headers.get("content-type", "").split(";")[0].strip()
    if media not in OTLP_TYPES:
        raise UnsupportedMediaType(f"an OTLP trace export is {' or '.join(OTLP_TYPES)}, not {media or 'untyped'}")
    url = otlp_traces_url()
    if url is None:
        return Response(status_code=status.HTTP_202_ACCEPTED)
    body = await request.body()
    client: httpx.AsyncClient = request.app.state.trace_client
    try:
        answer = await client.post(url, content=body, headers={"content-type": media})
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"the trace store did not answer ({type(exc).__name__})") from exc
    if answer.status_code >= 300:
        raise ServiceUnavailable(f"the trace store refused the spans ({answer.status_code})")
    return Response(status_code=status.HTTP_202_ACCEPTED)

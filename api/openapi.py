"""The OpenAPI document the app serves: FastAPI's, plus the RFC 9457 problem responses every
operation can give (FastAPI only documents its own 422, as plain JSON)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.errors import PROBLEM_JSON

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object",
            "properties": {"loc": {"type": "array", "items": {"type": "string"}}, "msg": {"type": "string"},
                           "type": {"type": "string"}},
        }},
    },
}
DESCRIPTIONS = {
    "401": "Missing, unknown or revoked API key",
    "403": "The key may not do this (admin routes need an admin key)",
    "404": "No such resource (or another account's)",
    "409": "Conflicts with the resource's state",
    "413": "Body over 1 MiB",
    "422": "Invalid input: which field and why",
    "429": "Over one of the account's limits (see Retry-After)",
    "503": "A service behind the API is unreachable",
}
PUBLIC = {"/healthz", "/readyz"}
NOT_FOUND_BY_QUERY = {"/events"}  # ?job_id= of another account's job


def _problem(status: str) -> dict[str, Any]:
    return {"description": DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _stream_schemas() -> dict[str, Any]:
    """The WebSocket `/stream` messages (OpenAPI has no WebSocket operations; their schemas live here,
    so generated clients get their types)."""
    from pydantic import BaseModel

    from api.stream.router import ControlMessage
    from constellation_core.events import Event
    from constellation_core.telemetry import GpuSample

    class StreamHeartbeat(BaseModel):
        type: Literal["heartbeat"]
        last_event_id: int

    class StreamControlReply(BaseModel):
        type: Literal["subscribed", "unsubscribed", "error"]
        topic: str | None = None
        job_id: str | None = None
        detail: str | None = None

    models = {"StreamEvent": Event, "StreamGpuSample": GpuSample, "StreamHeartbeat": StreamHeartbeat,
              "StreamControlMessage": ControlMessage, "StreamControlReply": StreamControlReply}
    schemas: dict[str, Any] = {}
    for name, model in models.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schema["title"] = name
        schemas[name] = schema
    schemas["StreamServerMessage"] = {
        "title": "StreamServerMessage",
        "description": "What WS /stream sends: events (with ids), GPU samples, heartbeats, control replies",
        "oneOf": [{"$ref": f"#/components/schemas/{n}"} for n in
                  ("StreamEvent", "StreamGpuSample", "StreamHeartbeat", "StreamControlReply")],
    }
    return schemas


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = PROBLEM_SCHEMA
        schemas.update(_stream_schemas())
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                statuses = ["422"]
                if path not in PUBLIC:
                    statuses.append("401")
                if "{" in path or path in NOT_FOUND_BY_QUERY:
                    statuses.append("404")
                if method == "post":
                    statuses.append("413")
                statuses += [s for s in ("403", "409", "429", "503") if s in responses]
                for status in statuses:
                    responses[status] = _problem(status)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi

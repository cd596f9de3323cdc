from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from api.deps import EngineDep
from api.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/healthz", response_model=Health, name="live")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, name="ready", responses={503: {"description": "Not ready"}})
async def readyz(request: Request, engine: EngineDep) -> Health:
    """Postgres and NATS are reachable."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["postgres"] = f"error: {type(exc).__name__}"
    checks["nats"] = "ok" if request.app.state.nats.is_connected else "error: disconnected"
    if any(v != "ok" for v in checks.values()):
        raise ServiceUnavailable("not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
    return Health(status="ok", checks=checks)


@router.get("/metrics", name="metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

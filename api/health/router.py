from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from api.accounts.auth import authenticate, key_from_headers
from api.deps import EngineDep, SettingsDep
from api.errors import Forbidden, ServiceUnavailable
from api.metrics import DATABASE_FIGURES

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


@router.get("/metrics", name="metrics", response_class=Response,
            responses={403: {"description": "A member's key: metrics are for the scraper token or an admin"}})
async def metrics(
    engine: EngineDep, settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Prometheus metrics, for a scraper with the metrics token (`CONSTELLATION_METRICS_TOKEN`, sent as
    `Authorization: Bearer`) or an admin's key: they name routes, devices and load, not for anyone."""
    presented = key_from_headers(authorization, x_api_key)
    token = settings.metrics_token
    if not (token and presented and hmac.compare_digest(presented, token)):
        if not (await authenticate(engine, presented)).is_admin:
            raise Forbidden("metrics are for the metrics token or an admin key")
    if DATABASE_FIGURES.stale():
        async with engine.connect() as conn:
            await DATABASE_FIGURES.refresh(conn, settings.local_dir / "analytics")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

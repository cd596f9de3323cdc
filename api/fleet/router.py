"""GET /fleet/history: the fleet's queue, throughput and pool saturation over time, from Prometheus.

Fleet-wide figures with no tenant in them (the same for every caller), read with fixed PromQL over
the series the API and the dispatcher export; Prometheus keeps them 15 days, so the dashboard's
charts survive any restart of the API.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from api.deps import CurrentAccount
from api.prometheus import query_range, step_for

router = APIRouter(prefix="/fleet", tags=["fleet"])

HISTORY_MAX_S = 15 * 24 * 3600


class HistorySeries(BaseModel):
    name: str
    unit: str
    description: str
    points: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        description="[unix seconds, value] pairs, oldest first; a gap where Prometheus had no sample")


class FleetHistory(BaseModel):
    since: datetime
    until: datetime
    step_s: int = Field(description="Seconds between points")
    series: list[HistorySeries]


def _series(rate_window_s: int) -> list[tuple[str, str, str, str]]:
    """(name, unit, description, PromQL). Several API replicas export the same figures from Postgres:
    `max` over them, not `sum`."""
    window = f"{rate_window_s}s"
    return [
        ("queued", "jobs", "Jobs waiting for a device", 'max(constellation_jobs{state="queued"})'),
        ("running", "jobs", "Jobs running", 'max(constellation_jobs{state="running"})'),
        ("tiles_per_s", "tiles/s", "Tiles inferred per second, all devices",
         f"sum(max without (instance, job) (rate(constellation_device_tiles_total[{window}])))"),
        ("pool_saturation", "ratio", "Device pool slots in use ÷ slots",
         "sum(constellation_pool_slots_in_use) / sum(constellation_pool_slots)"),
    ]


@router.get("/history", response_model=FleetHistory, name="history",
            responses={503: {"description": "The metrics store (Prometheus) did not answer"}})
async def fleet_history(
    request: Request, account: CurrentAccount,
    seconds: Annotated[int, Query(ge=60, le=HISTORY_MAX_S, description="How far back")] = 3600,
) -> FleetHistory:
    """Queue depth, running jobs, tiles/s and pool saturation over the last `seconds` (one point per
    step: 5 s, or coarser so a span gives at most 400)."""
    until = datetime.now(UTC)
    since = until - timedelta(seconds=seconds)
    step = step_for(seconds)
    wanted = _series(rate_window_s=max(60, 2 * step))
    client = request.app.state.prometheus_client
    answers = await asyncio.gather(*(query_range(client, expr, since, until, step) for *_, expr in wanted))
    return FleetHistory(since=since, until=until, step_s=step, series=[
        HistorySeries(name=name, unit=unit, description=description,
                      points=[list(point) for point in answer[0].points] if answer else [])
        for (name, unit, description, _), answer in zip(wanted, answers, strict=True)
    ])

"""/analytics: named, parameterized, read-only queries over the analytics views.

Clients pick a query by name and give typed parameters; they never send SQL. Each query reads the
views `constellation_core.analytics_db` defines (the same the `analytics_duckdb` asset creates),
built here in an in-memory DuckDB per thread over the exported Parquet, so the API never contends
with Dagster for the database file. Members see their own account's rows.
"""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api import access
from api.deps import CurrentAccount, SettingsDep
from api.errors import InvalidInput

router = APIRouter(prefix="/analytics", tags=["analytics"])

_local = threading.local()

Since = Annotated[date | None, Query(description="From this day (UTC), inclusive")]
Until = Annotated[date | None, Query(description="To this day (UTC), inclusive")]


class ThroughputRow(BaseModel):
    device: str
    simulated: bool | None
    tiles: int
    avg_inference_ms: float | None = Field(description="Model time per tile")
    tiles_per_s: float | None = Field(description="1000 / avg_inference_ms: the device's inference rate")


class GpuSecondsPerKm2Row(BaseModel):
    account: str
    runs: int
    gpu_seconds: float
    km2: float
    gpu_seconds_per_km2: float | None


class DailyVolumeRow(BaseModel):
    day: date
    account: str
    tiles: int
    jobs: int
    km2: float


def _query(root: Path, view: str, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """Run `sql` against this thread's DuckDB once `view` exists (its dataset exported); else no rows."""
    from constellation_core.analytics_db import connect, create_views

    databases: dict[Path, tuple[Any, set[str]]] = _local.__dict__.setdefault("databases", {})
    if root not in databases:
        databases[root] = (connect(), set())
    conn, views = databases[root]
    if view not in views:  # datasets appear as Dagster exports them
        views |= set(create_views(conn, root))
        if view not in views:
            return []  # nothing exported yet
    cursor = conn.cursor()
    try:
        result = cursor.execute(sql, params)
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row)) for row in result.fetchall()]
    finally:
        cursor.close()


def _window(since: date | None, until: date | None) -> tuple[date, date]:
    since, until = since or date(1970, 1, 1), until or date(9999, 12, 31)
    if since > until:
        raise InvalidInput("`since` is after `until`",
                           errors=[{"loc": ["query", "since"], "msg": "after until", "type": "value_error"}])
    return since, until


async def _named_query(account, settings, view: str, select: str, rest: str, since: date | None,
                       until: date | None) -> list[dict[str, Any]]:
    """`SELECT {select} FROM {view} WHERE <day window> [AND <caller's rows>] {rest}`; members see
    their own account's rows."""
    since, until = _window(since, until)
    conditions, params = ["day BETWEEN ? AND ?"], [since, until]
    if access.owner_scope(account) is not None:  # the exports name accounts, not their ids
        conditions.append("account = ?")
        params.append(account.name)
    sql = f"SELECT {select} FROM {view} WHERE {' AND '.join(conditions)} {rest}"
    return await run_in_threadpool(_query, settings.local_dir / "analytics", view, sql, params)


@router.get("/throughput-by-device", response_model=list[ThroughputRow], name="throughput_by_device")
async def throughput_by_device(account: CurrentAccount, settings: SettingsDep, since: Since = None,
                               until: Until = None) -> list[dict[str, Any]]:
    """Tiles and inference rate per device (model and simulated flag), from the exported tile results."""
    return await _named_query(
        account, settings, "device_throughput_daily",
        "device, any_value(simulated) AS simulated, sum(tiles) AS tiles, "
        "sum(inference_ms) / sum(tiles) AS avg_inference_ms, 1000 * sum(tiles) / nullif(sum(inference_ms), 0) AS tiles_per_s",
        "GROUP BY device ORDER BY tiles DESC", since, until,
    )


@router.get("/gpu-seconds-per-km2", response_model=list[GpuSecondsPerKm2Row], name="gpu_seconds_per_km2")
async def gpu_seconds_per_km2(account: CurrentAccount, settings: SettingsDep, since: Since = None,
                              until: Until = None) -> list[dict[str, Any]]:
    """Device time spent per square kilometre of area covered, per account, from the exported runs."""
    return await _named_query(
        account, settings, "gpu_seconds_daily",
        "account, sum(runs) AS runs, sum(gpu_seconds) AS gpu_seconds, sum(km2) AS km2, "
        "sum(gpu_seconds) / nullif(sum(km2), 0) AS gpu_seconds_per_km2",
        "GROUP BY account ORDER BY gpu_seconds DESC", since, until,
    )


@router.get("/daily-volume", response_model=list[DailyVolumeRow], name="daily_volume")
async def daily_volume(account: CurrentAccount, settings: SettingsDep, since: Since = None,
                       until: Until = None) -> list[dict[str, Any]]:
    """Tiles, jobs and square kilometres inferred per day and account (geodesic areas of the footprints)."""
    return await _named_query(account, settings, "daily_volume", "day, account, tiles, jobs, km2", "ORDER BY 1, 2",
                              since, until)

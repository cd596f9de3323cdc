"""/analytics: named, parameterized, read-only DuckDB queries over the Parquet exports.

Clients pick a query by name and give typed parameters; they never send SQL. DuckDB reads the
exported Parquet (GeoParquet for tiles) in memory, with the spatial extension, so the API never
contends with Dagster for the analytics database file. Members see their own account's rows.
"""

from __future__ import annotations

import threading
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

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



def _connection():
    """This thread's DuckDB cursor (in memory, spatial loaded once per thread)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        from constellation_core.analytics import connect

        conn = _local.conn = connect()
    return conn


def _query(root, dataset: str, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    files = sorted((root / dataset).glob("day=*/*.parquet"))
    if not files:
        return []  # nothing exported yet
    conn = _connection()
    source = f"read_parquet({[str(f) for f in files]!r}, hive_partitioning = true, union_by_name = true)"
    cursor = conn.cursor()
    try:
        result = cursor.execute(sql.replace("{source}", source), params)
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


async def _named_query(account, settings, dataset: str, select: str, rest: str, since: date | None,
                       until: date | None, where: str = "") -> list[dict[str, Any]]:
    """`SELECT {select} FROM {dataset} WHERE <day window> [AND where] [AND <caller's rows>] {rest}`,
    read-only over the Parquet exports; members see their own account's rows."""
    since, until = _window(since, until)
    conditions, params = ["CAST(day AS DATE) BETWEEN ? AND ?"], [since, until]
    if where:
        conditions.append(where)
    if not account.is_admin:
        conditions.append("account = ?")
        params.append(account.name)
    sql = f"SELECT {select} FROM {{source}} WHERE {' AND '.join(conditions)} {rest}"
    return await run_in_threadpool(_query, settings.local_dir / "analytics", dataset, sql, params)


@router.get("/throughput-by-device", response_model=list[ThroughputRow], name="throughput_by_device")
async def throughput_by_device(account: CurrentAccount, settings: SettingsDep, since: Since = None,
                               until: Until = None) -> list[dict[str, Any]]:
    """Tiles and inference rate per device (model and simulated flag), from the exported tile results."""
    return await _named_query(
        account, settings, "tile_results",
        "device, any_value(simulated) AS simulated, count(*) AS tiles, avg(inference_ms) AS avg_inference_ms, "
        "1000 / nullif(avg(inference_ms), 0) AS tiles_per_s",
        "GROUP BY device ORDER BY tiles DESC", since, until,
    )


@router.get("/gpu-seconds-per-km2", response_model=list[GpuSecondsPerKm2Row], name="gpu_seconds_per_km2")
async def gpu_seconds_per_km2(account: CurrentAccount, settings: SettingsDep, since: Since = None,
                              until: Until = None) -> list[dict[str, Any]]:
    """Device time spent per square kilometre of area covered, per account, from the exported runs."""
    return await _named_query(
        account, settings, "run_metrics",
        "account, count(*) AS runs, coalesce(sum(gpu_seconds), 0) AS gpu_seconds, coalesce(sum(area_km2), 0) AS km2, "
        "sum(gpu_seconds) / nullif(sum(area_km2), 0) AS gpu_seconds_per_km2",
        "GROUP BY account ORDER BY gpu_seconds DESC", since, until, where="state = 'succeeded'",
    )


@router.get("/daily-volume", response_model=list[DailyVolumeRow], name="daily_volume")
async def daily_volume(account: CurrentAccount, settings: SettingsDep, since: Since = None,
                       until: Until = None) -> list[dict[str, Any]]:
    """Tiles, jobs and square kilometres inferred per day and account (geodesic areas of the footprints)."""
    # ST_Area_Spheroid reads (lat, lon), the EPSG:4326 axis order: flip our (lon, lat) footprints.
    return await _named_query(
        account, settings, "tile_results",
        "CAST(day AS DATE) AS day, account, count(*) AS tiles, count(DISTINCT job_id) AS jobs, "
        "sum(ST_Area_Spheroid(ST_FlipCoordinates(footprint))) / 1e6 AS km2",
        "GROUP BY ALL ORDER BY 1, 2", since, until,
    )

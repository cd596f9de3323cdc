"""Downstream assets: tile results and run metrics exported to Parquet (one partition per day;
footprints as GeoParquet), and a DuckDB database with views over them for analytics."""

import os
from pathlib import Path

import dagster as dg
from sqlalchemy import text

from constellation_core.settings import get_settings
from constellation_dagster.resources import SystemOfRecord

DAILY = dg.DailyPartitionsDefinition(start_date="2026-11-01", timezone="UTC", end_offset=1)

TILE_RESULTS_SQL = """
SELECT r.job_id::text AS job_id, r.z, r.x, r.y, r.class, r.confidence, r.inference_ms, r.model_version,
       r.created_at, a.name AS account, r.device, g.uuid AS device_uuid, g.simulated, t.footprint
FROM tile_results r
JOIN tiles t ON t.job_id = r.job_id AND t.z = r.z AND t.x = r.x AND t.y = r.y
JOIN jobs j ON j.id = r.job_id
JOIN accounts a ON a.id = j.account_id
LEFT JOIN gpus g ON g.id = r.gpu_id
WHERE r.created_at >= CAST(:day AS date) AND r.created_at < CAST(:day AS date) + 1
ORDER BY r.job_id, r.z, r.x, r.y
"""

RUN_METRICS_SQL = """
SELECT r.id::text AS run_id, r.job_id::text AS job_id, a.name AS account, r.state, r.started_at, r.finished_at,
       extract(epoch FROM r.finished_at - r.started_at) AS seconds,
       (r.metrics->>'tiles')::int AS tiles, (r.metrics->>'gpu_seconds')::float8 AS gpu_seconds,
       (r.metrics->>'devices')::int AS devices, (r.metrics->>'peak_mem_mb')::float8 AS peak_mem_mb,
       (r.metrics->>'energy_joules')::float8 AS energy_joules,
       ST_Area(j.aoi::geography) / 1e6 AS area_km2
FROM runs r JOIN jobs j ON j.id = r.job_id JOIN accounts a ON a.id = j.account_id
WHERE r.finished_at >= CAST(:day AS date) AND r.finished_at < CAST(:day AS date) + 1
ORDER BY r.finished_at
"""


def datasets_root() -> Path:
    return get_settings().local_dir / "analytics"


def _partition_path(dataset: str, day: str) -> Path:
    path = datasets_root() / dataset / f"day={day}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_parquet(frame, path: Path) -> None:
    """Replace the partition's file at once: a reader (the DuckDB views, the API's analytics, a
    refresh run launched with the export) sees the old file or the new one, never a half-written one
    (seen: "too small to be a Parquet file"); an export killed mid-write leaves the old file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # (not matched by `*.parquet`)
    try:
        frame.to_parquet(partial, index=False)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@dg.asset(partitions_def=DAILY, group_name="analytics", kinds={"parquet", "geopandas"},
          description="Every tile result of the day with its footprint, as GeoParquet.")
def tile_results_parquet(context: dg.AssetExecutionContext, db: SystemOfRecord) -> dg.MaterializeResult:
    import geopandas

    with db.begin() as conn:
        frame = geopandas.read_postgis(text(TILE_RESULTS_SQL), conn, geom_col="footprint",
                                       params={"day": context.partition_key})
    if frame.crs is None:
        frame = frame.set_crs(4326)
    path = _partition_path("tile_results", context.partition_key)
    _write_parquet(frame, path)
    return dg.MaterializeResult(metadata={"rows": len(frame), "bytes": path.stat().st_size,
                                          "path": dg.MetadataValue.path(str(path))})


@dg.asset(partitions_def=DAILY, group_name="analytics", kinds={"parquet"},
          description="Every inference run that ended that day, with its metrics.")
def run_metrics_parquet(context: dg.AssetExecutionContext, db: SystemOfRecord) -> dg.MaterializeResult:
    import pandas

    with db.begin() as conn:
        frame = pandas.read_sql(text(RUN_METRICS_SQL), conn, params={"day": context.partition_key})
    path = _partition_path("run_metrics", context.partition_key)
    _write_parquet(frame, path)
    return dg.MaterializeResult(metadata={"rows": len(frame), "bytes": path.stat().st_size,
                                          "path": dg.MetadataValue.path(str(path))})


@dg.asset(deps=[tile_results_parquet, run_metrics_parquet], group_name="analytics", kinds={"duckdb"},
          description="DuckDB database (with spatial) holding views over the Parquet exports.")
def analytics_duckdb(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    from constellation_core.analytics_db import connect, create_views

    root = datasets_root()
    path = root / "constellation.duckdb"
    metadata = {}
    with connect(path) as conn:
        for name in create_views(conn, root):
            metadata[f"{name}_rows"] = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    metadata["path"] = dg.MetadataValue.path(str(path))
    return dg.MaterializeResult(metadata=metadata)


analytics_export = dg.define_asset_job(
    "analytics_export", selection=[tile_results_parquet, run_metrics_parquet], partitions_def=DAILY,
    description="Export one day of results and metrics to Parquet.",
    # Two small steps: in the run worker, not two fresh interpreters competing with inference.
    executor_def=dg.in_process_executor,
)
analytics_refresh = dg.define_asset_job(
    "analytics_refresh", selection=[analytics_duckdb], description="Refresh the DuckDB views.",
    executor_def=dg.in_process_executor,
)

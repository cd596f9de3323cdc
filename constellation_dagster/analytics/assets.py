"""Downstream assets: tile results and run metrics exported to Parquet (one partition per day;
footprints as GeoParquet), and a DuckDB database with views over them for analytics."""

import json
import os
from collections.abc import Callable
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
  AND r.job_id = ANY(CAST(:jobs AS uuid[]))
ORDER BY r.job_id, r.z, r.x, r.y
"""

# Each job's results of the day, as (count, newest id): results are only ever inserted, so a job whose
# pair has not changed since the last export has nothing new.
DAY_JOBS_SQL = """
SELECT job_id::text, count(*), max(id) FROM tile_results
WHERE created_at >= CAST(:day AS date) AND created_at < CAST(:day AS date) + 1
GROUP BY job_id
"""
# The Parquet key-value metadata under which a day's file records what it holds: {job id: [count, newest id]}.
EXPORTED_JOBS_KEY = b"constellation:jobs"

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


def _write_parquet(path: Path, write: Callable[[Path], None]) -> None:
    """Replace the partition's file at once (`write` writes the new one to the path it is given): a
    reader (the DuckDB views, the API's analytics, a refresh run launched with the export) sees the
    old file or the new one, never a half-written one (seen: "too small to be a Parquet file"); an
    export killed mid-write leaves the old file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # (not matched by `*.parquet`)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@dg.asset(partitions_def=DAILY, group_name="analytics", kinds={"parquet", "geopandas"},
          description="Every tile result of the day with its footprint, as GeoParquet. Incremental: only the "
                      "results of jobs that have new ones since the last export are read from Postgres.")
def tile_results_parquet(context: dg.AssetExecutionContext, db: SystemOfRecord) -> dg.MaterializeResult:
    path = _partition_path("tile_results", context.partition_key)
    with db.snapshot() as conn:
        rows, jobs_read = export_tile_results(conn, context.partition_key, path)
    return dg.MaterializeResult(metadata={"rows": rows, "jobs_read": jobs_read, "bytes": path.stat().st_size,
                                          "path": dg.MetadataValue.path(str(path))})


def export_tile_results(conn, day: str, path: Path) -> tuple[int, int]:
    """Bring the day's file up to date with Postgres; returns its rows and the number of jobs whose
    results were read. Rewriting the whole day on every export cost O(results of the day) of Postgres,
    geometry parsing and CPU (6 s and more per export after a busy day, while a backlog ran): the file
    records each job's (count, newest id) and only jobs whose pair changed (new results, or results
    gone) are read again; the rest of the file is carried over as Arrow data, geometry untouched.
    `conn` must be a snapshot (REPEATABLE READ), so that the pairs describe exactly the rows read."""
    import geopandas
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    marks = {job: [count, newest] for job, count, newest in conn.execute(text(DAY_JOBS_SQL), {"day": day})}
    held = pq.ParquetFile(path).read() if path.exists() else None
    held_marks = json.loads((held.schema.metadata or {}).get(EXPORTED_JOBS_KEY, b"{}")) if held is not None else {}
    stale = {job for job, mark in marks.items() if held_marks.get(job) != mark} | (held_marks.keys() - marks.keys())
    if held is not None and EXPORTED_JOBS_KEY in (held.schema.metadata or {}) and not stale:
        return held.num_rows, 0
    fetched = sorted(stale & marks.keys())
    frame = geopandas.read_postgis(text(TILE_RESULTS_SQL), conn, geom_col="footprint",
                                   params={"day": day, "jobs": fetched})
    if frame.crs is None:
        frame = frame.set_crs(4326)
    table = _geoparquet_table(frame)  # the new rows, with their GeoParquet metadata (geopandas writes it)
    if held is not None:
        kept = held.filter(pc.invert(pc.is_in(held["job_id"], value_set=pa.array(sorted(stale), held["job_id"].type))))
        table = _concatenated(kept, table)
    table = table.replace_schema_metadata({**table.schema.metadata, EXPORTED_JOBS_KEY: json.dumps(marks).encode()})
    _write_parquet(path, lambda target: pq.write_table(table, target))
    return table.num_rows, len(fetched)


def _geoparquet_table(frame):
    """A GeoDataFrame as the Arrow table geopandas writes to GeoParquet (its `geo` metadata included)."""
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return pq.read_table(buffer)


def _concatenated(kept, added):
    """Rows carried over and rows added, as one table whose GeoParquet metadata covers both: geometry
    types united, bounding boxes united (a box that may be larger than the rows left, never smaller)."""
    import pyarrow as pa

    if added.num_rows == 0:
        return kept
    if kept.num_rows == 0:
        return added
    table = pa.concat_tables([kept, added], promote_options="permissive")
    geo, other = json.loads(added.schema.metadata[b"geo"]), json.loads(kept.schema.metadata[b"geo"])
    for name, column in geo["columns"].items():
        before = other["columns"].get(name, {})
        column["geometry_types"] = sorted({*column.get("geometry_types", []), *before.get("geometry_types", [])})
        if "bbox" in column and "bbox" in before:
            (a, b) = column["bbox"], before["bbox"]
            column["bbox"] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
        else:
            column.pop("bbox", None)
    return table.replace_schema_metadata({**added.schema.metadata, b"geo": json.dumps(geo).encode()})


@dg.asset(partitions_def=DAILY, group_name="analytics", kinds={"parquet"},
          description="Every inference run that ended that day, with its metrics.")
def run_metrics_parquet(context: dg.AssetExecutionContext, db: SystemOfRecord) -> dg.MaterializeResult:
    import pandas

    with db.begin() as conn:
        frame = pandas.read_sql(text(RUN_METRICS_SQL), conn, params={"day": context.partition_key})
    path = _partition_path("run_metrics", context.partition_key)
    _write_parquet(path, lambda target: frame.to_parquet(target, index=False))
    return dg.MaterializeResult(metadata={"rows": len(frame), "bytes": path.stat().st_size,
                                          "path": dg.MetadataValue.path(str(path))})


@dg.asset(deps=[tile_results_parquet, run_metrics_parquet], group_name="analytics", kinds={"duckdb"},
          description="DuckDB database (with spatial) holding views over the Parquet exports.")
def analytics_duckdb(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    from constellation_core.analytics_db import connect, create_views

    root = datasets_root()
    root.mkdir(parents=True, exist_ok=True)  # nothing exported yet: a database with no views
    path = root / "constellation.duckdb"
    metadata = {}
    with connect(path) as conn:
        for name in create_views(conn, root):
            metadata[f"{name}_rows"] = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    metadata["path"] = dg.MetadataValue.path(str(path))
    return dg.MaterializeResult(metadata=metadata)


# The export and refresh runs carry this tag, and the run queue lets one such run go at a time
# (`tag_concurrency_limits` in infra/dagster/dagster.yaml): the sensors request a day's exports and
# then a refresh, so the refresh runs after the exports it follows, in the order requested. Launched
# side by side, the first refresh of a fresh checkout ran before any export had written a file: it
# failed, and the DuckDB views stayed missing until the next export.
ANALYTICS_TAG = "constellation/analytics"

analytics_export = dg.define_asset_job(
    "analytics_export", selection=[tile_results_parquet, run_metrics_parquet], partitions_def=DAILY,
    description="Export one day of results and metrics to Parquet.",
    # Two small steps: in the run worker, not two fresh interpreters competing with inference.
    executor_def=dg.in_process_executor, tags={ANALYTICS_TAG: "export"},
)
analytics_refresh = dg.define_asset_job(
    "analytics_refresh", selection=[analytics_duckdb], description="Refresh the DuckDB views.",
    executor_def=dg.in_process_executor, tags={ANALYTICS_TAG: "refresh"},
)

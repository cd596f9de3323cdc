"""DuckDB over the Parquet exports, with the spatial extension from the `duckdb-extension-spatial`
package (loaded from its file: no network), and the analytics views — defined once, here.

The `analytics_duckdb` asset creates these views in `.local/analytics/constellation.duckdb` for
anyone with DuckDB; the API creates the same views in an in-memory database of its own (so it never
contends with Dagster for the file) and answers `/analytics/…` from them."""

from __future__ import annotations

from pathlib import Path

import duckdb

import duckdb_extension_spatial

SPATIAL_EXTENSION = next(Path(duckdb_extension_spatial.__file__).parent.glob(
    f"extensions/v{duckdb.__version__}/spatial.duckdb_extension"))

# Each exported dataset: a Parquet file per day (`<root>/<dataset>/day=YYYY-MM-DD/part-0.parquet`).
DATASETS = ("tile_results", "run_metrics")

# View → (the dataset it reads, its body). Per day and account, so that a window and an account can
# be chosen by a WHERE and the sums added up.
VIEWS: dict[str, tuple[str, str]] = {
    "tile_results": ("tile_results", "SELECT * FROM read_parquet('{root}/tile_results/*/*.parquet', "
                                     "hive_partitioning = true, union_by_name = true)"),
    "run_metrics": ("run_metrics", "SELECT * FROM read_parquet('{root}/run_metrics/*/*.parquet', "
                                   "hive_partitioning = true, union_by_name = true)"),
    "device_throughput_daily": ("tile_results", (
        "SELECT CAST(day AS DATE) AS day, account, device, any_value(simulated) AS simulated, count(*) AS tiles, "
        "sum(inference_ms) AS inference_ms FROM tile_results GROUP BY ALL")),
    "gpu_seconds_daily": ("run_metrics", (
        "SELECT CAST(day AS DATE) AS day, account, count(*) AS runs, coalesce(sum(gpu_seconds), 0) AS gpu_seconds, "
        "coalesce(sum(area_km2), 0) AS km2 FROM run_metrics WHERE state = 'succeeded' GROUP BY ALL")),
    "daily_volume": ("tile_results", (
        "SELECT CAST(day AS DATE) AS day, account, count(*) AS tiles, count(DISTINCT job_id) AS jobs, "
        # ST_Area_Spheroid reads coordinates as (lat, lon), the EPSG:4326 axis order: flip ours.
        "sum(ST_Area_Spheroid(ST_FlipCoordinates(footprint))) / 1e6 AS km2 FROM tile_results GROUP BY ALL")),
}


def connect(database: Path | str = ":memory:", *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(database), read_only=read_only, config={"allow_unsigned_extensions": "true"})
    conn.execute(f"LOAD '{SPATIAL_EXTENSION}'")
    return conn


def exported(root: Path) -> set[str]:
    """The datasets that have at least one exported day."""
    return {dataset for dataset in DATASETS if next((root / dataset).glob("day=*/*.parquet"), None) is not None}


def create_views(conn: duckdb.DuckDBPyConnection, root: Path) -> list[str]:
    """(Re)create every view whose dataset has been exported; returns their names. A view over a
    dataset with no file yet cannot be created (DuckDB reads the files' schema)."""
    available = exported(root)
    created = []
    for name, (dataset, body) in VIEWS.items():
        if dataset in available:
            conn.execute(f"CREATE OR REPLACE VIEW {name} AS {body.format(root=root)}")
            created.append(name)
    return created

"""The Parquet exports and DuckDB views, materialized against the real Postgres into a temp folder."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest
from sqlalchemy import func, insert

from constellation_core.accounts import create_account
from constellation_core.analytics import connect
from constellation_core.settings import get_settings
from constellation_core.tables import gpus, jobs, runs, tile_results, tiles
from constellation_core.tiles import plan_tiles
from constellation_dagster.analytics.assets import analytics_duckdb, run_metrics_parquet, tile_results_parquet
from constellation_dagster.resources import SystemOfRecord
from pyproj import Geod
from shapely import box


@pytest.fixture
def local_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSTELLATION_LOCAL_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_exports_a_day_to_geoparquet_and_duckdb_answers_spatially(engine, database_url, local_dir):
    area = box(6.10, 46.18, 6.13, 46.20)
    planned = plan_tiles(area, 15, cap=100)
    with engine.begin() as conn:
        account_id = create_account(conn, "analytics-owner")
        job_id = conn.execute(insert(jobs).values(
            name="analytics", state="succeeded", submitted_by="analytics-owner", account_id=account_id, zoom=15,
            aoi=func.ST_GeomFromText(area.wkt, 4326), tiles_total=len(planned),
        ).returning(jobs.c.id)).scalar_one()
        gpu_id = conn.execute(insert(gpus).values(uuid="SIM-ANALYTICS", name="Simulated GPU (analytics test)",
                                                  simulated=True).returning(gpus.c.id)).scalar_one()
        run_id = conn.execute(insert(runs).values(
            job_id=job_id, dagster_run_id="analytics-run", state="succeeded", finished_at=func.now(),
            metrics={"tiles": len(planned), "gpu_seconds": 2.5, "devices": 1},
        ).returning(runs.c.id)).scalar_one()
        conn.execute(insert(tiles), [{"job_id": job_id, "z": t.z, "x": t.x, "y": t.y,
                                      "footprint": f"SRID=4326;{t.footprint.wkt}"} for t in planned])
        conn.execute(insert(tile_results), [{"job_id": job_id, "z": t.z, "x": t.x, "y": t.y, "run_id": run_id,
                                             "class": "water", "confidence": 0.9, "inference_ms": 1.0,
                                             "device": "sim", "gpu_id": gpu_id, "model_version": "m@1"}
                                            for t in planned])
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    result = dg.materialize(
        [tile_results_parquet, run_metrics_parquet, analytics_duckdb],
        partition_key=today,
        resources={"db": SystemOfRecord(database_url=database_url)},
        selection=[tile_results_parquet, run_metrics_parquet],
    )
    assert result.success
    exported = result.asset_materializations_for_node("tile_results_parquet")[0].metadata["rows"].value
    assert exported >= len(planned)
    assert (local_dir / "analytics" / "tile_results" / f"day={today}" / "part-0.parquet").exists()

    assert dg.materialize([analytics_duckdb], resources={}).success
    with connect(local_dir / "analytics" / "constellation.duckdb", read_only=True) as conn:
        mine = conn.execute(
            "SELECT count(*), sum(ST_Area_Spheroid(ST_FlipCoordinates(footprint))) / 1e6 FROM tile_results "
            "WHERE job_id = ?",
            [str(job_id)],
        ).fetchone()
        volume = conn.execute("SELECT tiles, km2 FROM daily_volume WHERE account = 'analytics-owner'").fetchone()
        run_row = conn.execute("SELECT tiles, gpu_seconds FROM run_metrics WHERE job_id = ?", [str(job_id)]).fetchone()
    # Independent check of DuckDB spatial's geodesic area: pyproj on the WGS84 ellipsoid.
    geod = Geod(ellps="WGS84")
    expected_km2 = sum(abs(geod.geometry_area_perimeter(t.footprint)[0]) for t in planned) / 1e6
    assert mine[0] == len(planned)
    assert mine[1] == pytest.approx(expected_km2, rel=1e-3)
    assert volume[0] == len(planned) and volume[1] == pytest.approx(expected_km2, rel=1e-3)
    assert run_row == (len(planned), 2.5)

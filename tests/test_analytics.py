"""The Parquet exports and DuckDB views, materialized against the real Postgres into a temp folder."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
import pytest
from pyproj import Geod
from shapely import box
from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from constellation_core.accounts import create_account
from constellation_core.analytics_db import connect
from constellation_core.settings import get_settings
from constellation_core.tables import gpus, jobs, runs, tile_results, tiles
from constellation_core.tiles import plan_tiles
from constellation_dagster.analytics.assets import (
    analytics_duckdb,
    run_metrics_parquet,
    tile_results_parquet,
)
from constellation_dagster.resources import SystemOfRecord


@pytest.fixture
def local_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSTELLATION_LOCAL_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_exports_a_day_to_geoparquet_and_duckdb_answers_spatially(engine, database_url, nats_url, local_dir):
    area = box(6.10, 46.18, 6.13, 46.20)
    with engine.begin() as conn:
        account_id = create_account(conn, "analytics-owner")
    job_id, planned = add_job_with_results(engine, account_id, area)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    result = dg.materialize(
        [tile_results_parquet, run_metrics_parquet, analytics_duckdb],
        partition_key=today,
        resources={"db": SystemOfRecord(database_url=database_url)},
        selection=[tile_results_parquet, run_metrics_parquet],
    )
    assert result.success
    exported = result.asset_materializations_for_node("tile_results_parquet")[0].metadata["rows"].value
    assert exported == len(planned)
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

    # The same figures through the API's named queries (members: their own rows only).
    from fastapi.testclient import TestClient

    from api.main import create_app
    from constellation_core.accounts import issue_api_key
    from constellation_core.settings import Settings

    with engine.begin() as conn:
        owner_key = issue_api_key(conn, account_id)
        stranger_key = issue_api_key(conn, create_account(conn, "analytics-stranger"))
    settings = Settings(database_url=database_url, nats_url=nats_url, CONSTELLATION_LOCAL_DIR=str(local_dir))
    with TestClient(create_app(settings)) as client:
        def get(path: str, key: str, **params) -> list[dict]:
            response = client.get(f"/analytics/{path}", params=params, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
            return response.json()

        volume_rows = get("daily-volume", owner_key, since=today, until=today)
        assert [(r["account"], r["tiles"], r["jobs"]) for r in volume_rows] == [("analytics-owner", len(planned), 1)]
        assert volume_rows[0]["km2"] == pytest.approx(expected_km2, rel=1e-3)
        per_device = get("throughput-by-device", owner_key)
        assert per_device == [{"device": "sim", "simulated": True, "tiles": len(planned), "avg_inference_ms": 1.0,
                               "tiles_per_s": 1000.0}]
        per_km2 = get("gpu-seconds-per-km2", owner_key)
        assert per_km2[0]["gpu_seconds"] == 2.5 and per_km2[0]["km2"] == pytest.approx(area_km2(area), rel=1e-3)
        assert get("daily-volume", stranger_key) == [] and get("throughput-by-device", stranger_key) == []
        backwards = client.get("/analytics/daily-volume", params={"since": "2026-12-02", "until": "2026-12-01"},
                               headers={"Authorization": f"Bearer {owner_key}"})
        assert backwards.status_code == 422 and backwards.headers["content-type"] == "application/problem+json"


def add_job_with_results(engine, account_id, area, *, results: slice = slice(None)):
    """A succeeded job over `area` at zoom 15 with its run, its tiles and the results of `results` of them."""
    planned = plan_tiles(area, 15, cap=100)
    with engine.begin() as conn:
        job_id = conn.execute(insert(jobs).values(
            name="analytics", state="succeeded", submitted_by="analytics-owner", account_id=account_id, zoom=15,
            aoi=func.ST_GeomFromText(area.wkt, 4326), tiles_total=len(planned),
        ).returning(jobs.c.id)).scalar_one()
        gpu_id = conn.execute(pg_insert(gpus).values(
            uuid="SIM-ANALYTICS", name="Simulated GPU (analytics test)", simulated=True,
        ).on_conflict_do_update(index_elements=["uuid"], set_={"simulated": True}).returning(gpus.c.id)).scalar_one()
        run_id = conn.execute(insert(runs).values(
            job_id=job_id, dagster_run_id=f"analytics-run-{job_id}", state="succeeded", finished_at=func.now(),
            metrics={"tiles": len(planned), "gpu_seconds": 2.5, "devices": 1},
        ).returning(runs.c.id)).scalar_one()
        conn.execute(insert(tiles), [{"job_id": job_id, "z": t.z, "x": t.x, "y": t.y,
                                      "footprint": f"SRID=4326;{t.footprint.wkt}"} for t in planned])
    add_results(engine, job_id, run_id, gpu_id, planned[results])
    return job_id, planned


def add_results(engine, job_id, run_id, gpu_id, planned) -> None:
    with engine.begin() as conn:
        conn.execute(insert(tile_results), [{"job_id": job_id, "z": t.z, "x": t.x, "y": t.y, "run_id": run_id,
                                             "class": "water", "confidence": 0.9, "inference_ms": 1.0,
                                             "device": "sim", "gpu_id": gpu_id, "model_version": "m@1"}
                                            for t in planned])


def test_each_export_reads_only_the_jobs_with_new_results_and_the_day_holds_each_result_once(
        engine, database_url, local_dir):
    import geopandas

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    path = local_dir / "analytics" / "tile_results" / f"day={today}" / "part-0.parquet"

    def export() -> tuple[int, int]:
        result = dg.materialize([tile_results_parquet], partition_key=today,
                                resources={"db": SystemOfRecord(database_url=database_url)})
        assert result.success
        metadata = result.asset_materializations_for_node("tile_results_parquet")[0].metadata
        return metadata["rows"].value, metadata["jobs_read"].value

    with engine.begin() as conn:
        account_id = create_account(conn, "analytics-owner")
    west, west_tiles = add_job_with_results(engine, account_id, box(6.10, 46.18, 6.13, 46.20), results=slice(0, 3))
    assert export() == (3, 1)
    assert export() == (3, 0)  # nothing new: nothing read from Postgres

    # The job running on gets more results, another job starts: those two are read, nothing else.
    with engine.begin() as conn:
        run_id, gpu_id = conn.execute(
            select(tile_results.c.run_id, tile_results.c.gpu_id).where(tile_results.c.job_id == west).limit(1)).one()
    add_results(engine, west, run_id, gpu_id, west_tiles[3:])
    east, east_tiles = add_job_with_results(engine, account_id, box(7.40, 46.90, 7.44, 46.93))
    assert export() == (len(west_tiles) + len(east_tiles), 2)
    third, third_tiles = add_job_with_results(engine, account_id, box(8.50, 47.35, 8.53, 47.38))
    assert export() == (len(west_tiles) + len(east_tiles) + len(third_tiles), 1)
    # An operator deletes a job (its results go with it): the next export drops its rows, reads nothing.
    with engine.begin() as conn:
        conn.execute(delete(jobs).where(jobs.c.id == third))
    assert export() == (len(west_tiles) + len(east_tiles), 0)
    add_job_with_results(engine, account_id, box(8.50, 47.35, 8.53, 47.38))
    assert export() == (len(west_tiles) + len(east_tiles) + len(third_tiles), 1)
    third = next(iter(set(geopandas.read_parquet(path)["job_id"]) - {str(west), str(east)}))

    # The file holds every result of the day once, its geometry readable as GeoParquet by geopandas and
    # by DuckDB spatial, with a bounding box around all three areas.
    frame = geopandas.read_parquet(path)
    assert frame.crs.to_epsg() == 4326
    counts = frame.groupby("job_id").size().to_dict()
    assert counts == {str(west): len(west_tiles), str(east): len(east_tiles), str(third): len(third_tiles)}
    assert not frame.duplicated(["job_id", "z", "x", "y"]).any()
    stored = [(str(west), t.x, t.y) for t in west_tiles] + [(str(east), t.x, t.y) for t in east_tiles]
    assert set(stored) <= set(zip(frame["job_id"], frame["x"], frame["y"], strict=True))
    import pyarrow.parquet as pq

    bbox = json.loads(pq.read_schema(path).metadata[b"geo"])["columns"]["footprint"]["bbox"]
    assert bbox == pytest.approx(list(frame.geometry.total_bounds))
    with connect(local_dir / "check.duckdb") as conn:
        assert conn.execute(f"SELECT count(*), count(DISTINCT (job_id, z, x, y)), "
                            f"min(ST_XMin(footprint)), max(ST_XMax(footprint)) FROM read_parquet('{path}')"
                            ).fetchone() == (len(frame), len(frame), pytest.approx(6.10, abs=0.01),
                                             pytest.approx(8.53, abs=0.01))


def area_km2(geometry) -> float:
    return abs(Geod(ellps="WGS84").geometry_area_perimeter(geometry)[0]) / 1e6


def test_an_export_that_dies_mid_write_leaves_the_days_previous_file_readable(tmp_path):
    import pandas

    from constellation_dagster.analytics.assets import _write_parquet

    path = tmp_path / "day=2026-12-02" / "part-0.parquet"
    path.parent.mkdir()
    _write_parquet(path, lambda target: pandas.DataFrame({"tiles": [1, 2]}).to_parquet(target))

    def dies_half_way(target):
        with open(target, "wb") as out:
            out.write(b"PAR1")  # a file too short to be Parquet, as an interrupted write leaves it
        raise OSError("killed")

    with pytest.raises(OSError, match="killed"):
        _write_parquet(path, dies_half_way)
    with connect(tmp_path / "check.duckdb") as conn:  # what the views and the API read
        assert conn.execute(f"SELECT sum(tiles) FROM read_parquet('{tmp_path}/*/*.parquet')").fetchone()[0] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-0.parquet"]

"""The rest of the API surface against real Postgres+PostGIS and NATS: listing with cursors and
filters, idempotent submission, areas, tiles/coverage GeoJSON, events, GPUs."""

from __future__ import annotations

import functools
import math
import threading
import uuid

from shapely.geometry import box, shape
from sqlalchemy import func, insert, select
from sqlalchemy import text as sql_text

from constellation_core.tables import areas, gpus, jobs, steps, tile_results, tiles
from constellation_core.tiles import plan_tiles
from constellation_core.waiting import free_port, wait_for
from tests.conftest import role_url
from tests.samples import GENEVA, job_body

PROBLEM = "application/problem+json"


def test_job_list_pages_newest_first_with_cursors_and_filters(client, make_account):
    account, other = make_account(), make_account()
    created = [client.post("/jobs", json=job_body(name=f"job {i}"), headers=account.headers).json()["id"]
               for i in range(5)]
    client.post("/jobs", json=job_body(), headers=other.headers)
    client.post(f"/jobs/{created[0]}/cancel", headers=account.headers)

    seen, cursor = [], None
    while True:
        page = client.get("/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=account.headers)
        assert page.status_code == 200, page.text
        seen += [job["id"] for job in page.json()["data"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(created))  # every job once, newest first, only the member's own
    canceled = client.get("/jobs", params={"state": "canceled"}, headers=account.headers).json()["data"]
    assert [job["id"] for job in canceled] == [created[0]]
    queued = client.get("/jobs", params=[("state", "queued"), ("state", "running")], headers=account.headers)
    assert len(queued.json()["data"]) == 4


def test_job_list_rejects_bad_filters_and_cursors(client, make_account):
    account = make_account()
    for params in ({"cursor": "garbage!"}, {"cursor": "WyJ4Il0"}, {"state": "sleeping"}, {"limit": 0},
                   {"limit": 100000}, {"created_after": "yesterday"}):
        response = client.get("/jobs", params=params, headers=account.headers)
        assert response.status_code == 422, params
        assert response.headers["content-type"] == PROBLEM


def test_an_idempotency_key_returns_the_same_job_and_writes_nothing_more(client, make_account, engine):
    account = make_account()
    headers = {**account.headers, "Idempotency-Key": f"submit-{uuid.uuid4()}"}
    first = client.post("/jobs", json=job_body(), headers=headers)
    again = client.post("/jobs", json=job_body(), headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.account_id == account.id))
        assert count.scalar_one() == 1
    different = client.post("/jobs", json=job_body(zoom=13), headers=headers)
    assert different.status_code == 422 and "Idempotency-Key" in different.json()["detail"]
    # The key is the account's own: another account may use the same string.
    other = make_account()
    assert client.post("/jobs", json=job_body(), headers={**other.headers, "Idempotency-Key": headers["Idempotency-Key"]}).status_code == 201


def test_job_detail_shows_queue_position_runs_and_eta(client, make_account):
    account, other = make_account(), make_account()
    first = client.post("/jobs", json=job_body(priority=5), headers=account.headers).json()
    urgent = client.post("/jobs", json=job_body(priority=10), headers=other.headers).json()
    later = client.post("/jobs", json=job_body(priority=5), headers=account.headers).json()
    low = client.post("/jobs", json=job_body(priority=-5), headers=account.headers).json()

    def position(job) -> int:
        return client.get(f"/jobs/{job['id']}", headers=account.headers).json()["queue_position"]

    # Every queued job counts (whoever's): higher priority first, then the older.
    assert [position(first), position(later), position(low)] == [2, 3, 4]
    client.post(f"/jobs/{urgent['id']}/cancel", headers=other.headers)
    assert [position(first), position(later), position(low)] == [1, 2, 3]
    detail = client.get(f"/jobs/{first['id']}", headers=account.headers).json()
    assert detail["runs"] == [] and detail["eta_seconds"] is None


def test_areas_import_validate_and_list(client, make_account, engine):
    account, other = make_account(), make_account()
    feature = {"type": "Feature", "properties": {"name": "Geneva"}, "geometry": GENEVA}
    created = client.post("/areas", json={"name": "Geneva", "geojson": feature}, headers=account.headers)
    assert created.status_code == 201, created.text
    area = created.json()
    assert area["area_km2"] > 1 and area["bbox"][0] < area["bbox"][2]
    assert shape(area["geometry"]).equals_exact(shape(GENEVA), 1e-6)
    # A job names the stored area; another member cannot.
    assert client.post("/jobs", json={"name": "by id", "zoom": 14, "area_id": area["id"]},
                       headers=account.headers).status_code == 201
    assert client.post("/jobs", json={"name": "by id", "zoom": 14, "area_id": area["id"]},
                       headers=other.headers).status_code == 422
    assert [a["id"] for a in client.get("/areas", headers=account.headers).json()["data"]] == [area["id"]]
    assert client.get("/areas", headers=other.headers).json()["data"] == []
    assert client.get(f"/areas/{area['id']}", headers=other.headers).status_code == 404

    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(areas)).scalar_one()
    bow_tie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    bad = [
        {"type": "Point", "coordinates": [6.1, 46.2]},
        bow_tie,
        {**GENEVA, "crs": {"type": "name", "properties": {"name": "EPSG:3857"}}},
        {"type": "FeatureCollection", "features": []},
        {"type": "Polygon", "coordinates": [[[-170, -60], [170, -60], [170, 60], [-170, 60], [-170, -60]]]},
        {"type": "Polygon", "coordinates": "nope"},
    ]
    for geojson in bad:
        response = client.post("/areas", json={"name": "bad", "geojson": geojson}, headers=account.headers)
        assert response.status_code == 422, geojson
        assert response.headers["content-type"] == PROBLEM
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(areas)).scalar_one() == before


def _fake_results(engine, job_id) -> int:
    """Write results for the job's tiles as an inference step would (tiles planned independently)."""
    planned = plan_tiles(shape(GENEVA), 14, 500)
    with engine.begin() as conn:
        gpu_id = conn.execute(insert(gpus).values(uuid=f"TEST-{uuid.uuid4()}", name="Test GPU", simulated=True)
                              .returning(gpus.c.id)).scalar_one()
        conn.execute(insert(tiles), [{"job_id": job_id, "z": t.z, "x": t.x, "y": t.y,
                                      "footprint": f"SRID=4326;{t.footprint.wkt}"} for t in planned])
        conn.execute(insert(tile_results), [
            {"job_id": job_id, "z": t.z, "x": t.x, "y": t.y, "class": "water", "confidence": 0.9,
             "device": "Test GPU", "gpu_id": gpu_id, "model_version": "test"} for t in planned[:-1]])
        conn.execute(insert(steps).values(job_id=job_id, gpu_id=gpu_id, step_key="admit_on_test", pid=1))
    return len(planned)


def test_tiles_and_coverage_are_geojson(client, make_account, engine):
    account, other = make_account(), make_account()
    job = client.post("/jobs", json=job_body(), headers=account.headers).json()
    planned = _fake_results(engine, job["id"])

    tiles_geojson = client.get(f"/jobs/{job['id']}/tiles", headers=account.headers)
    assert tiles_geojson.status_code == 200
    assert tiles_geojson.headers["content-type"] == "application/geo+json"
    features = tiles_geojson.json()["features"]
    assert len(features) == planned
    assert sum(f["properties"]["class"] == "water" for f in features) == planned - 1  # one not inferred yet
    assert all(shape(f["geometry"]).intersects(shape(GENEVA)) for f in features)
    assert client.get(f"/jobs/{job['id']}/tiles", headers=other.headers).status_code == 404

    west, south, east, north = shape(GENEVA).bounds
    bbox = f"{west},{south},{(west + east) / 2},{north}"
    covered = client.get("/coverage", params={"bbox": bbox}, headers=account.headers).json()
    half = box(west, south, (west + east) / 2, north)
    assert covered["features"] and all(shape(f["geometry"]).intersects(half) for f in covered["features"])
    assert {f["properties"]["job_id"] for f in covered["features"]} == {job["id"]}
    assert client.get("/coverage", params={"bbox": bbox}, headers=other.headers).json()["features"] == []
    limited = client.get("/coverage", params={"bbox": bbox, "limit": 1}, headers=account.headers).json()
    assert len(limited["features"]) == 1 and limited["truncated"] is True
    for bad in ("1,2,3", "6,46,5,47", "a,b,c,d", "nan,0,1,1"):
        response = client.get("/coverage", params={"bbox": bad}, headers=account.headers)
        assert response.status_code == 422 and response.headers["content-type"] == PROBLEM


def test_gpus_list_marks_simulated_devices_and_who_is_on_them(client, make_account, engine):
    account, admin = make_account(), make_account("admin")
    job = client.post("/jobs", json=job_body(), headers=account.headers).json()
    _fake_results(engine, job["id"])
    listed = client.get("/gpus", headers=admin.headers)
    assert listed.status_code == 200
    mine = [g for g in listed.json() if g["name"] == "Test GPU" and job["id"] in g["job_ids"]]
    assert len(mine) == 1 and mine[0]["simulated"] is True and mine[0]["busy"] is True
    assert mine[0]["tiles_per_s"] is None, "no batch in the last two minutes: no rate"
    with engine.begin() as conn:  # 32 tiles in 0.5 s on it a second ago; 32 in 0.01 s three minutes ago
        for chunk_no, (ended_ago, seconds) in enumerate(((1, 0.5), (180, 0.01))):
            conn.execute(sql_text(
                "INSERT INTO tile_chunks (job_id, chunk_no, tiles, state, device_uuid, started_at, finished_at) "
                "VALUES (:job, :n, 32, 'done', :device, now() - make_interval(secs => :ago + :s), "
                "now() - make_interval(secs => :ago))"),
                {"job": job["id"], "n": chunk_no, "device": mine[0]["uuid"], "ago": ended_ago, "s": seconds})
    rated = [g for g in client.get("/gpus", headers=admin.headers).json() if g["uuid"] == mine[0]["uuid"]]
    assert rated[0]["tiles_per_s"] == 64.0, "what serial placement weighs the work ahead by: the last two minutes"
    # The job's owner sees it on the device too; another member sees the device busy, not whose job.
    own_view = [g for g in client.get("/gpus", headers=account.headers).json() if g["name"] == "Test GPU"]
    assert own_view[0]["job_ids"] == [job["id"]]
    stranger = make_account()
    theirs = [g for g in client.get("/gpus", headers=stranger.headers).json() if g["name"] == "Test GPU"]
    assert theirs[0]["busy"] is True and theirs[0]["job_ids"] == []


def test_the_cli_lists_the_devices_with_their_rate_and_who_is_on_them(client, make_account, engine, monkeypatch):
    import contextlib

    from typer.testing import CliRunner

    from constellation_cli import main as cli

    account = make_account()
    job = client.post("/jobs", json=job_body(), headers=account.headers).json()
    _fake_results(engine, job["id"])
    with engine.begin() as conn:
        device = conn.execute(sql_text("SELECT g.uuid FROM gpus g JOIN steps s ON s.gpu_id = g.id "
                                       "WHERE s.job_id = :job"), {"job": job["id"]}).scalar_one()
        conn.execute(sql_text(
            "INSERT INTO tile_chunks (job_id, chunk_no, tiles, state, device_uuid, started_at, finished_at) "
            "VALUES (:job, 0, 64, 'done', :device, now() - interval '1.25 s', now() - interval '1 s')"),
            {"job": job["id"], "device": device})
    client.headers["Authorization"] = f"Bearer {account.key}"
    monkeypatch.setattr(cli, "_client", lambda: contextlib.nullcontext(client))
    shown = CliRunner().invoke(cli.app, ["gpus"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.output.splitlines() if f"job {job['id'][:8]}" in line)
    assert "Test GPU (simulated)" in row and "serving" in row and " 256 " in row, row


def test_the_cli_takes_a_job_by_the_start_of_its_id_among_the_callers_jobs(client, make_account, monkeypatch):
    """`ls` in an 80-column terminal shows "36d00647…": that start is enough for status, logs, watch, cancel."""
    import contextlib

    import pytest
    from typer.testing import CliRunner

    from constellation_cli import main as cli

    mine, theirs = make_account(), make_account()
    job = client.post("/jobs", json=job_body(name="mine"), headers=mine.headers).json()
    other = client.post("/jobs", json=job_body(name="theirs"), headers=theirs.headers).json()
    client.headers["Authorization"] = f"Bearer {mine.key}"
    monkeypatch.setattr(cli, "_client", lambda: contextlib.nullcontext(client))

    def status(given: str):
        return CliRunner().invoke(cli.app, ["status", given], env={"COLUMNS": "250"})

    for given in (job["id"][:8], job["id"][:8] + "…", job["id"].upper()[:13], job["id"]):
        shown = status(given)
        assert shown.exit_code == 0 and f"mine {job['id']}" in shown.output, (given, shown.output)
    refused = status(other["id"][:8])  # another account's job is not among the caller's
    assert refused.exit_code == 1 and "no job id starts with" in refused.output, refused.output
    assert status("zz").exit_code == 1

    ids = ["36d00647-c9dc-4dee-b237-3390eb3ce8d2", "36d0ffff-0000-4000-8000-000000000000"]
    assert cli.match_job_id("36d006", ids) == ids[0]
    with pytest.raises(cli.ApiError, match="starts 2 job ids"):
        cli.match_job_id("36d0", ids)


def test_events_history_pages_by_id_and_respects_ownership(client, make_account):
    account, other = make_account(), make_account()
    job = client.post("/jobs", json=job_body(), headers=account.headers).json()
    client.post(f"/jobs/{job['id']}/cancel", headers=account.headers)
    first = client.get("/events", params={"job_id": job["id"], "limit": 1}, headers=account.headers).json()
    assert [e["payload"]["state"] for e in first["data"]] == ["queued"]
    assert first["data"][0]["seq"] == 1  # a job's events are numbered in commit order
    rest = client.get("/events", params={"job_id": job["id"], "after": first["next_cursor"]},
                      headers=account.headers).json()
    assert [e["payload"]["state"] for e in rest["data"]] == ["canceled"] and rest["next_cursor"] is None
    assert rest["data"][0]["seq"] == 2
    assert client.get("/events", params={"job_id": job["id"]}, headers=other.headers).status_code == 404
    assert all(e["account_id"] == str(other.id) for e in client.get("/events", headers=other.headers).json()["data"])
    assert client.get("/events", params={"after": -1}, headers=account.headers).status_code == 422


def test_job_list_sorts_server_side_with_cursors_per_sort_and_searches_names(client, make_account):
    account = make_account()
    for name, priority in (("beta", 5), ("alpha", -1), ("gamma", 9), ("Alpha two", 0)):
        assert client.post("/jobs", json=job_body(name=name, priority=priority), headers=account.headers).status_code == 201

    def all_pages(**params):
        names, cursor = [], None
        while True:
            page = client.get("/jobs", params={"limit": 1, **params, **({"cursor": cursor} if cursor else {})},
                              headers=account.headers)
            assert page.status_code == 200, page.text
            names += [job["name"] for job in page.json()["data"]]
            if (cursor := page.json()["next_cursor"]) is None:
                return names

    assert all_pages(sort="name") == ["Alpha two", "alpha", "beta", "gamma"]  # byte order, as Postgres sorts here
    assert all_pages(sort="-priority") == ["gamma", "beta", "Alpha two", "alpha"]
    assert all_pages(sort="created_at") == ["beta", "alpha", "gamma", "Alpha two"]
    assert all_pages() == ["Alpha two", "gamma", "alpha", "beta"]
    assert sorted(all_pages(q="ALPHA")) == ["Alpha two", "alpha"]
    assert all_pages(q="100%") == []  # wildcards in the search are plain characters

    cursor = client.get("/jobs", params={"limit": 1, "sort": "name"}, headers=account.headers).json()["next_cursor"]
    wrong = client.get("/jobs", params={"cursor": cursor, "sort": "-priority"}, headers=account.headers)
    assert wrong.status_code == 422 and "another sort" in wrong.json()["detail"]
    assert client.get("/jobs", params={"sort": "state"}, headers=account.headers).status_code == 422


def test_summary_counts_states_and_tiles_per_minute_of_the_callers_jobs(client, make_account, engine):
    account, other = make_account(), make_account()
    job = client.post("/jobs", json=job_body(), headers=account.headers).json()
    client.post("/jobs", json=job_body(), headers=account.headers)
    client.post(f"/jobs/{job['id']}/cancel", headers=account.headers)
    planned = _fake_results(engine, job["id"])
    summary = client.get("/jobs/summary", headers=account.headers)
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert body["counts"] == {"queued": 1, "running": 0, "succeeded": 0, "failed": 0, "canceled": 1}
    assert sum(m["tiles"] for m in body["tiles_per_minute"]) == planned - 1
    assert body["tiles_per_s"] > 0
    theirs = client.get("/jobs/summary", headers=other.headers).json()
    assert theirs["counts"]["queued"] == 0 and theirs["tiles_per_minute"] == []


def test_estimate_counts_tiles_like_a_submission_and_writes_nothing(client, make_account, engine):
    account = make_account()
    estimate = client.post("/jobs/estimate", json={"zoom": 14, "area": GENEVA}, headers=account.headers)
    assert estimate.status_code == 200, estimate.text
    assert estimate.json()["tiles"] == len(plan_tiles(shape(GENEVA), 14, 500))
    assert estimate.json()["max_tiles"] == 500 and estimate.json()["area_km2"] > 1
    too_big = client.post("/jobs/estimate", json={"zoom": 19, "area": GENEVA}, headers=account.headers)
    assert too_big.status_code == 422 and too_big.json()["errors"][0]["loc"] == ["body", "area"]
    point = client.post("/jobs/estimate", json={"zoom": 14, "area": {"type": "Point", "coordinates": [6, 46]}},
                        headers=account.headers)
    assert point.status_code == 422 and point.headers["content-type"] == PROBLEM
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(jobs).where(jobs.c.account_id == account.id)).scalar_one() == 0


def test_history_routes_say_503_when_prometheus_is_away_and_refuse_bad_spans(database_url, nats_url, make_account,
                                                                             engine):
    """Device telemetry and the fleet's history come from Prometheus (test_e2e reads them from a live
    one): with it away, a 503 problem+json (never a 500); an unknown device 404; spans out of range 422."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from constellation_core.settings import Settings

    account = make_account()
    device = f"TEST-{uuid.uuid4()}"
    with engine.begin() as conn:
        conn.execute(insert(gpus).values(uuid=device, name="Chart GPU", simulated=True))
    settings = Settings(database_url=role_url(database_url, "constellation_api"), nats_url=nats_url,
                        prometheus_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with TestClient(create_app(settings)) as client:
        for path in (f"/gpus/{device}/telemetry", "/fleet/history"):
            away = client.get(path, headers=account.headers)
            assert away.status_code == 503 and away.headers["content-type"] == PROBLEM, away.text
            assert "Prometheus" in away.json()["detail"]
        assert client.get("/gpus/no-such-device/telemetry", headers=account.headers).status_code == 404
        for path, seconds in ((f"/gpus/{device}/telemetry", 0), ("/fleet/history", 59),
                              ("/fleet/history", 16 * 24 * 3600)):
            assert client.get(path, params={"seconds": seconds}, headers=account.headers).status_code == 422
        assert client.get("/fleet/history").status_code == 401


def _enter_and_wait_for_release(flags) -> None:
    """In a planning process: say it started (`entered`, `entered-<pid>`), then wait for the test's
    `release` (files, since it is another process)."""
    import os
    import time

    (flags / "entered").touch()
    (flags / f"entered-{os.getpid()}").touch()
    deadline = time.monotonic() + 30
    while not (flags / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _planning_held_until_released(flags, area_geojson, zoom, max_tiles):
    """Runs in a planning process: says it started, then plans once the test releases it (files, since
    it is another process)."""
    from api.planning import plan_job_area

    _enter_and_wait_for_release(flags)
    return plan_job_area(area_geojson, zoom, max_tiles)


# Geneva's outline with more positions than the API plans on its event loop (api.planning.cheap_to_plan).
DETAILED_GENEVA = {"type": "Polygon", "coordinates": [[
    [6.14 + 0.01 * math.cos(2 * math.pi * i / 100), 46.20 + 0.01 * math.sin(2 * math.pi * i / 100)]
    for i in [*range(100), 0]
]]}


def _hold_planning(monkeypatch, flags):
    from api.jobs import service

    monkeypatch.setattr(service, "plan_in_worker", functools.partial(_planning_held_until_released, flags))


def _call_in_thread(client, answers: dict, name: str, method: str, path: str, **kwargs) -> threading.Thread:
    def call() -> None:
        answers[name] = client.request(method, path, **kwargs).status_code

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _healthz_answered_while_held(client, account, flags, area: dict, held: str) -> None:
    """An estimate of `area` whose `held` work waits in a planning process for the test: `/healthz` is
    answered meanwhile, and the estimate once released."""
    answers: dict[str, int] = {}
    estimate = _call_in_thread(client, answers, "estimate", "POST", "/jobs/estimate",
                               json={"zoom": 14, "area": area}, headers=account.headers)
    try:
        wait_for(lambda: (flags / "entered").exists(), timeout=20, what=f"the estimate's {held} to start",
                 interval=0.01)
        _call_in_thread(client, answers, "healthz", "GET", "/healthz").join(timeout=5)
        assert answers.get("healthz") == 200, f"/healthz waited on another request's {held}"
    finally:
        (flags / "release").touch()
        estimate.join(timeout=30)
    assert answers["estimate"] == 200


def test_planning_an_area_does_not_hold_up_other_requests(client, make_account, monkeypatch, tmp_path):
    """Tile planning runs off the event loop (in a planning process): while one request's planning is
    still going, `/healthz` (and every other request) is answered."""
    account = make_account()
    _hold_planning(monkeypatch, tmp_path)
    _healthz_answered_while_held(client, account, tmp_path, DETAILED_GENEVA, "tile planning")


def _parsing_held_until_released(flags, body: bytes):
    """Runs in a planning process: parses a request body once the test releases it."""
    import json

    _enter_and_wait_for_release(flags)
    return json.loads(body)


def test_a_large_body_is_parsed_off_the_event_loop(client, make_account, monkeypatch, tmp_path):
    """A megabyte of coordinates is parsed in a planning process: while it is, `/healthz` is answered."""
    from api import offload

    account = make_account()
    monkeypatch.setattr(offload, "parse_in_worker", functools.partial(_parsing_held_until_released, tmp_path))
    ring = [[6.14 + 0.01 * math.cos(2 * math.pi * i / 4000), 46.20 + 0.01 * math.sin(2 * math.pi * i / 4000)]
            for i in range(4000)]
    area = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    _healthz_answered_while_held(client, account, tmp_path, area, "JSON parsing")


def test_a_small_area_is_not_queued_behind_large_ones(client, make_account, monkeypatch, tmp_path):
    """While large areas occupy every planning process, a job on a small area (planned at once, in
    well under a millisecond) is still accepted."""
    from api.offload import PLANNING_PROCESSES

    account = make_account()
    _hold_planning(monkeypatch, tmp_path)
    answers: dict[str, int] = {}
    large = [_call_in_thread(client, answers, f"large {i}", "POST", "/jobs/estimate",
                             json={"zoom": 14, "area": DETAILED_GENEVA}, headers=account.headers)
             for i in range(PLANNING_PROCESSES)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("entered-*"))) == PLANNING_PROCESSES, timeout=20,
                 what="every planning process to hold a large area", interval=0.01)
        _call_in_thread(client, answers, "small", "POST", "/jobs", json=job_body(),
                        headers=account.headers).join(timeout=10)
        assert answers.get("small") == 201, "a small area's job waited for the planning processes"
    finally:
        (tmp_path / "release").touch()
        for thread in large:
            thread.join(timeout=30)
    assert [answers[f"large {i}"] for i in range(PLANNING_PROCESSES)] == [200] * PLANNING_PROCESSES


def test_an_area_too_large_for_the_cap_is_refused_quickly_with_the_reason(client, make_account):
    account = make_account()
    # One degree of thin sliver at zoom 20: thousands of tile rows (the old planner walked ~10⁹ tiles).
    sliver = {"type": "Polygon", "coordinates": [[[6.0, 46.0], [6.0001, 47.0], [6.0002, 47.0], [6.0001, 46.0],
                                                  [6.0, 46.0]]]}
    answer = client.post("/jobs/estimate", json={"zoom": 20, "area": sliver}, headers=account.headers)
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "over the cap of 500" in answer.json()["detail"]

"""The API against real Postgres+PostGIS and NATS: auth, validation (problem+json), ownership."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select, update

from api.stream import router as stream_router
from constellation_core.tables import events, gpus, jobs, steps
from tests.samples import job_body
from tests.streams import next_message

PROBLEM = "application/problem+json"


def _counts(engine):
    with engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(jobs)).scalar_one(),
            conn.execute(select(func.count()).select_from(events)).scalar_one(),
        )


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "nats": "ok"}


def test_submit_then_read_a_job(client, make_account):
    account = make_account()
    created = client.post("/jobs", json=job_body(priority=3, mode="serial"), headers=account.headers)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["state"] == "queued"
    assert job["submitted_by"] == account.name
    assert job["tiles_total"] > 0 and job["progress"] == 0
    assert (job["priority"], job["mode"], job["zoom"]) == (3, "serial", 14)
    assert created.headers["x-request-id"]
    fetched = client.get(f"/jobs/{job['id']}", headers=account.headers)
    assert fetched.status_code == 200
    assert fetched.json()["id"] == job["id"]


def test_correlation_id_is_kept_from_the_request(client, make_account, engine):
    account = make_account()
    response = client.post("/jobs", json=job_body(), headers={**account.headers, "X-Request-ID": "trace-abc-123"})
    assert response.headers["x-request-id"] == "trace-abc-123"
    with engine.connect() as conn:
        stored = conn.execute(select(jobs.c.correlation_id).where(jobs.c.id == response.json()["id"])).scalar_one()
    assert stored == "trace-abc-123"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [({}, "an API key is required"), ({"Authorization": "Bearer cst_not-a-real-key"}, "not valid")],
)
def test_missing_or_bad_key_is_401_problem(client, engine, headers, detail):
    before = _counts(engine)
    response = client.post("/jobs", json=job_body(), headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"]
    assert _counts(engine) == before


SELF_INTERSECTING = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
RING = [[6.10, 46.18], [6.19, 46.18], [6.19, 46.23], [6.10, 46.23], [6.10, 46.18]]


def _nested(depth: int) -> list:
    value: list = [6.1, 46.2]
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("overrides", "status", "needle"),
    [
        ({"area": SELF_INTERSECTING}, 422, "not valid"),
        ({"area": {"type": "Point", "coordinates": [6.1, 46.2]}}, 422, "Polygon or MultiPolygon"),
        ({"area": {"type": "Polygon", "coordinates": [[[600, 0], [601, 0], [601, 1], [600, 0]]]}}, 422, "lon/lat"),
        ({"area": {"type": "Polygon", "coordinates": "nope"}}, 422, "coordinates"),
        ({"zoom": 30}, 422, "zoom"),
        ({"zoom": 18}, 422, "over the cap"),
        ({"model": "no-such-model"}, 422, "unknown model"),
        ({"area": None}, 422, "exactly one of"),
        ({"area_id": str(uuid.uuid4())}, 422, "exactly one of"),
        ({"unexpected": 1}, 422, "unexpected"),
        # Hostile or careless input found by trying (issue 12): each a clear 422, nothing written.
        ({"area": {"type": "Polygon", "coordinates": [[[float("nan"), 46.18], *RING[1:]]]}}, 422, "finite"),
        ({"area": {"type": "Polygon", "coordinates": _nested(400)}}, 422, "nests deeper"),
        ({"area": {"type": "Polygon", "coordinates": [RING[:-1]]}}, 422, "closed"),
        ({"area": {"type": "Polygon", "coordinates": [[[6.1, 46.1], [6.2, 46.2], [6.3, 46.3], [6.1, 46.1]]]}},
         422, "no area"),
        ({"area": {"type": "Polygon", "coordinates": [RING], "crs": {"type": "name", "properties": "EPSG:4326"}}},
         422, "CRS"),
        ({"zoom": True}, 422, "zoom"),
        ({"zoom": "14"}, 422, "zoom"),
        ({"area": {"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [RING]}}] * 1001}},
         422, "at most 1000 features"),
        # A thin sliver one degree long at zoom 20: refused from its extent, before any tile is searched.
        ({"zoom": 20, "area": {"type": "Polygon", "coordinates": [[[6.0, 46.0], [6.0001, 47.0], [6.0002, 47.0],
                                                                   [6.0001, 46.0], [6.0, 46.0]]]}},
         422, "over the cap"),
    ],
)
def test_bad_job_input_is_a_problem_and_writes_nothing(client, make_account, engine, overrides, status, needle):
    account = make_account()
    before = _counts(engine)
    # Sent as text: a client may send what strict JSON encoders refuse (NaN).
    response = client.post("/jobs", content=json.dumps(job_body(**overrides)),
                           headers={**account.headers, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == status and problem["title"]
    assert needle in problem["detail"] or any(needle in str(e) for e in problem.get("errors", []))
    assert _counts(engine) == before


def test_malformed_json_and_oversized_body(client, make_account, engine):
    account = make_account()
    before = _counts(engine)
    broken = client.post("/jobs", content=b"{not json", headers={**account.headers, "Content-Type": "application/json"})
    assert broken.status_code == 422 and broken.headers["content-type"] == PROBLEM
    huge = client.post("/jobs", content=b"x" * (1024 * 1024 + 1), headers={**account.headers,
                                                                          "Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.headers["content-type"] == PROBLEM
    assert _counts(engine) == before


def test_malformed_and_unknown_job_ids(client, make_account):
    account = make_account()
    malformed = client.get("/jobs/not-a-uuid", headers=account.headers)
    assert malformed.status_code == 422 and malformed.headers["content-type"] == PROBLEM
    missing = client.get(f"/jobs/{uuid.uuid4()}", headers=account.headers)
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM


def test_members_see_only_their_jobs_and_admins_see_all(client, make_account):
    owner, other, admin = make_account(), make_account(), make_account("admin")
    job_id = client.post("/jobs", json=job_body(), headers=owner.headers).json()["id"]
    assert client.get(f"/jobs/{job_id}", headers=other.headers).status_code == 404
    assert client.get(f"/jobs/{job_id}", headers=admin.headers).status_code == 200


def test_metrics_count_submissions(client, make_account):
    account, admin = make_account(), make_account("admin")

    def series() -> dict[tuple, float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(client.get("/metrics", headers=admin.headers).text)
                for s in family.samples}

    created = ("constellation_http_requests_total", (("method", "POST"), ("route", "/jobs"), ("status", "201")))
    before = series()
    assert client.post("/jobs", json=job_body(), headers=account.headers).status_code == 201
    after = series()
    assert after[("constellation_jobs_submitted_total", ())] == before[("constellation_jobs_submitted_total", ())] + 1
    assert after[created] == before.get(created, 0) + 1


def test_metrics_read_the_jobs_lifecycle_and_the_devices_tiles_from_the_database(client, make_account, engine,
                                                                                  monkeypatch):
    """Counters every API process reports alike: jobs that entered each stage, by mode (from `events`),
    and each device's tiles (from its steps); a job's cancel counts once."""
    from api import metrics

    monkeypatch.setattr(metrics, "DATABASE_FIGURES_MAX_AGE_S", 0)  # each scrape reads Postgres
    account, admin = make_account(), make_account("admin")

    def series() -> dict[tuple, float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(client.get("/metrics", headers=admin.headers).text)
                for s in family.samples}

    serial = ("constellation_job_lifecycle_total", (("event", "submitted"), ("mode", "serial")))
    canceled = ("constellation_job_lifecycle_total", (("event", "canceled"), ("mode", "serial")))
    queued = ("constellation_jobs", (("state", "queued"),))
    before = series()
    job = client.post("/jobs", json=job_body(mode="serial"), headers=account.headers).json()
    client.post("/jobs", json=job_body(mode="serial"), headers=account.headers)
    client.post(f"/jobs/{job['id']}/cancel", headers=account.headers)
    after = series()
    assert after[serial] == before.get(serial, 0) + 2
    assert after[canceled] == before.get(canceled, 0) + 1
    assert after[queued] == before.get(queued, 0) + 1
    now = datetime.now(UTC)
    with engine.begin() as conn:
        gpu = conn.execute(insert(gpus).values(uuid="GPU-metrics-1", name="Test GPU").returning(gpus.c.id)).scalar_one()
        conn.execute(insert(steps), [{"job_id": job["id"], "gpu_id": gpu, "step_key": "admit", "pid": 1, "tiles": n,
                                      "started_at": now, "finished_at": now + timedelta(seconds=s)}
                                     for n, s in ((40, 7), (24, 70))])
        conn.execute(update(jobs).where(jobs.c.id == job["id"])
                     .values(first_batch_at=jobs.c.created_at + timedelta(seconds=2)))
    figures = series()
    assert figures[("constellation_device_tiles_total", (("device", "GPU-metrics-1"), ("name", "Test GPU")))] == 64
    steps_under = {le: figures[("constellation_step_duration_seconds_bucket", (("device", "GPU-metrics-1"), ("le", le)))]
                   for le in ("5.0", "10.0", "120.0")}
    assert steps_under == {"5.0": 0, "10.0": 1, "120.0": 2}
    wait = {le: figures[("constellation_job_first_batch_wait_seconds_bucket", (("le", le), ("mode", "serial")))]
            for le in ("1.0", "2.5", "+Inf")}
    assert wait["2.5"] - wait["1.0"] >= 1 and wait["+Inf"] >= 1


def test_metrics_read_the_database_at_most_every_few_seconds(client, make_account, monkeypatch):
    """Scrapes within DATABASE_FIGURES_MAX_AGE_S of a read serve its figures (reading them scans the
    jobs' history); the first scrape after it reads again."""
    from api import metrics

    account, admin = make_account(), make_account("admin")
    submitted = ("constellation_job_lifecycle_total", (("event", "submitted"), ("mode", "serial")))

    def scraped() -> float:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(client.get("/metrics", headers=admin.headers).text)
                for s in family.samples}.get(submitted, 0)

    monkeypatch.setattr(metrics, "DATABASE_FIGURES_MAX_AGE_S", 0)
    before = scraped()
    monkeypatch.setattr(metrics, "DATABASE_FIGURES_MAX_AGE_S", 3600)
    assert client.post("/jobs", json=job_body(mode="serial"), headers=account.headers).status_code == 201
    assert scraped() == before, "read again within the window"
    monkeypatch.setattr(metrics, "DATABASE_FIGURES_MAX_AGE_S", 0)
    assert scraped() == before + 1


def test_cancel_a_queued_job_once(client, make_account, engine):
    owner, other, admin = make_account(), make_account(), make_account("admin")
    job_id = client.post("/jobs", json=job_body(), headers=owner.headers).json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel", headers=other.headers).status_code == 404
    canceled = client.post(f"/jobs/{job_id}/cancel", headers=owner.headers)
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    assert canceled.json()["finished_at"] is not None
    again = client.post(f"/jobs/{job_id}/cancel", headers=admin.headers)
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM
    assert "already canceled" in again.json()["detail"]
    with engine.connect() as conn:
        states = conn.execute(
            select(events.c.payload["state"].astext).where(events.c.job_id == job_id).order_by(events.c.id)
        ).scalars().all()
    assert states == ["queued", "canceled"]


def test_one_socket_carries_several_subscriptions(client, make_account):
    owner, other = make_account(), make_account()
    first = client.post("/jobs", json=job_body(name="first"), headers=owner.headers).json()["id"]
    second = client.post("/jobs", json=job_body(name="second"), headers=owner.headers).json()["id"]
    foreign = client.post("/jobs", json=job_body(), headers=other.headers).json()["id"]

    with client.websocket_connect(f"/stream?job_id={first}&after=0", headers=owner.headers) as ws:
        assert next_message(ws)["job_id"] == first  # the replayed `queued` event
        ws.send_json({"type": "subscribe", "topic": "job", "job_id": second, "after": 0})
        assert next_message(ws) == {"type": "subscribed", "topic": "job", "job_id": second}
        replay = next_message(ws)
        assert (replay["job_id"], replay["payload"]["state"]) == (second, "queued")
        client.post(f"/jobs/{second}/cancel", headers=owner.headers)
        live = next_message(ws)
        assert (live["job_id"], live["payload"]["state"]) == (second, "canceled")

        ws.send_json({"type": "unsubscribe", "topic": "job", "job_id": second})
        assert next_message(ws)["type"] == "unsubscribed"
        ws.send_json({"type": "subscribe", "topic": "job", "job_id": foreign})
        assert next_message(ws)["type"] == "error"  # another account's job: refused, like a 404
        ws.send_json({"type": "subscribe", "topic": "weather"})
        assert next_message(ws)["type"] == "error"
        ws.send_bytes(b"\x00\x01")  # a binary frame: answered, and the socket goes on
        assert "binary" in next_message(ws, what="the answer to a binary frame")["detail"]
        client.post(f"/jobs/{first}/cancel", headers=owner.headers)
        ended = next_message(ws)
        assert (ended["job_id"], ended["payload"]["state"]) == (first, "canceled")


def test_an_idle_stream_sends_heartbeats_with_the_last_event_id(client, make_account, monkeypatch):
    monkeypatch.setattr(stream_router, "HEARTBEAT_S", 0.3)
    account = make_account()
    job_id = client.post("/jobs", json=job_body(), headers=account.headers).json()["id"]
    with client.websocket_connect(f"/stream?job_id={job_id}&after=0", headers=account.headers) as ws:
        queued = next_message(ws)
        beats = [next_message(ws, what="a heartbeat", timeout=10, heartbeats=True) for _ in range(2)]
    assert beats == [{"type": "heartbeat", "last_event_id": queued["id"]}] * 2


def test_a_body_that_is_not_json_at_all_is_a_422_problem(client, make_account):
    account = make_account()
    for path in ("/jobs", "/jobs/estimate", "/areas"):
        response = client.post(path, content=b"\xff\r\x8a&\x9cq", headers={**account.headers, "Content-Type": "application/json"})
        assert response.status_code == 422, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["loc"] == ["body"]


def test_a_chunked_body_over_the_limit_is_refused_with_413(client, make_account, engine):
    """A body without a Content-Length (chunked) is counted too: 413, not a parse error."""
    account = make_account()
    before = _counts(engine)

    def chunks():
        for _ in range(40):
            yield b" " * 65536  # 2.5 MiB in all, over the 1 MiB limit

    answer = client.post("/jobs", content=chunks(), headers={**account.headers, "Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.headers["content-type"] == PROBLEM, answer.text
    assert _counts(engine) == before

    def small():
        yield json.dumps(job_body()).encode()

    accepted = client.post("/jobs", content=small(), headers={**account.headers, "Content-Type": "application/json"})
    assert accepted.status_code == 201, accepted.text


def test_the_wrong_method_on_estimate_is_405_not_a_bad_job_id(client, make_account):
    account = make_account()
    wrong = client.get("/jobs/estimate", headers=account.headers)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST", wrong.text
    assert wrong.headers["content-type"] == PROBLEM
    for method in ("PUT", "DELETE"):
        assert client.request(method, "/jobs/estimate", headers=account.headers).status_code == 405


def test_options_and_a_wrong_method_name_every_method_the_path_answers(client, make_account):
    account = make_account()
    options = client.options("/jobs", headers=account.headers)
    assert options.status_code == 204 and options.headers["allow"] == "GET, OPTIONS, POST", options.headers
    wrong = client.delete("/jobs", headers=account.headers)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, OPTIONS, POST", wrong.headers
    assert wrong.headers["content-type"] == PROBLEM
    estimate = client.options("/jobs/estimate", headers=account.headers)
    assert estimate.status_code == 204 and estimate.headers["allow"] == "OPTIONS, POST", estimate.headers
    one_job = client.options(f"/jobs/{uuid.uuid4()}", headers=account.headers)
    assert one_job.headers["allow"] == "GET, OPTIONS", one_job.headers


def test_oversized_headers_are_refused_with_431(client, make_account):
    account = make_account()
    answer = client.get("/jobs", headers={**account.headers, "X-Padding": "x" * 20_000})
    assert answer.status_code == 431 and answer.headers["content-type"] == PROBLEM, answer.text
    assert client.get("/jobs", headers={**account.headers, "X-Padding": "x" * 2_000}).status_code == 200


def test_metrics_are_for_the_scraper_token_or_an_admin(database_url, nats_url, make_account):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from constellation_core.settings import Settings

    settings = Settings(database_url=database_url, nats_url=nats_url, CONSTELLATION_METRICS_TOKEN="scrape-me")
    member = make_account()
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=member.headers).status_code == 403
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert scraped.status_code == 200 and "constellation_http_requests_total" in scraped.text

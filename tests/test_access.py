"""The access policy (api/access.py), one rule per resource, each for an admin, the owner and
another member: what a member may not see answers 404 exactly like what does not exist."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from api import access
from api.accounts.auth import Account
from constellation_core.telemetry import GpuSample
from tests.samples import GENEVA, job_body
from tests.streams import next_message

PROBLEM = "application/problem+json"


def test_a_job_and_all_of_it_is_seen_by_its_owner_and_admins_only(client, make_account):
    owner, other, admin = make_account(), make_account(), make_account("admin")
    job_id = client.post("/jobs", json=job_body(), headers=owner.headers).json()["id"]
    client.post(f"/jobs/{job_id}/cancel", headers=owner.headers)  # ended: its SSE log stream ends too
    missing = str(uuid.uuid4())
    for path in ("/jobs/{}", "/jobs/{}/tiles", "/jobs/{}/logs", "/events?job_id={}"):
        assert client.get(path.format(job_id), headers=owner.headers).status_code == 200, path
        assert client.get(path.format(job_id), headers=admin.headers).status_code == 200, path
        refused = client.get(path.format(job_id), headers=other.headers)
        absent = client.get(path.format(missing), headers=other.headers)
        assert (refused.status_code, absent.status_code) == (404, 404), path
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["detail"].replace(job_id, "ID") == absent.json()["detail"].replace(missing, "ID")
    assert client.post(f"/jobs/{job_id}/cancel", headers=other.headers).status_code == 404
    # Listings: the owner's rows for members, everyone's for admins.
    for path in ("/jobs", "/events"):
        assert job_id in str(client.get(path, headers=owner.headers).json()), path
        assert job_id in str(client.get(path, headers=admin.headers).json()), path
        assert job_id not in str(client.get(path, headers=other.headers).json()), path
    assert client.get("/jobs/summary", headers=other.headers).json()["counts"]["canceled"] == 0
    assert client.get("/jobs/summary", headers=owner.headers).json()["counts"]["canceled"] == 1


def test_a_job_stream_topic_follows_the_same_rule(client, make_account):
    owner, other, admin = make_account(), make_account(), make_account("admin")
    job_id = client.post("/jobs", json=job_body(), headers=owner.headers).json()["id"]
    for account, answer in ((owner, "subscribed"), (admin, "subscribed"), (other, "error")):
        with client.websocket_connect("/stream", headers=account.headers) as ws:
            ws.send_json({"type": "subscribe", "topic": "logs", "job_id": job_id})
            assert next_message(ws, what="the answer to a subscribe")["type"] == answer
    # On the every-job topic, a member gets their own jobs' events only: the foreign cancel, published
    # first, never comes; the member's own next job does.
    with client.websocket_connect("/stream", headers=other.headers) as ws:
        client.post(f"/jobs/{job_id}/cancel", headers=owner.headers)
        own = client.post("/jobs", json=job_body(), headers=other.headers).json()["id"]
        assert next_message(ws, what="the member's own job's event")["job_id"] == own


def test_an_area_is_seen_and_used_by_its_owner_and_admins_only(client, make_account):
    owner, other, admin = make_account(), make_account(), make_account("admin")
    area_id = client.post("/areas", json={"name": "Geneva", "geojson": GENEVA}, headers=owner.headers).json()["id"]
    for account, status in ((owner, 200), (admin, 200), (other, 404)):
        assert client.get(f"/areas/{area_id}", headers=account.headers).status_code == status
        listed = [a["id"] for a in client.get("/areas", headers=account.headers).json()["data"]]
        assert (area_id in listed) == (status == 200)
        submitted = client.post("/jobs", json={"name": "on area", "zoom": 14, "area_id": area_id},
                                headers=account.headers)
        assert submitted.status_code == (201 if status == 200 else 422), submitted.text


def test_a_device_is_seen_by_all_and_the_job_on_it_by_its_owner_and_admins():
    owner, other = Account(uuid.uuid4(), "owner", "member"), Account(uuid.uuid4(), "other", "member")
    admin = Account(uuid.uuid4(), "admin", "admin")
    sample = GpuSample(device_uuid="GPU-1", name="GPU", simulated=False, ts=datetime.now(UTC), job_id=uuid.uuid4(),
                       account_id=owner.id, fields={"DCGM_FI_DEV_GPU_UTIL": 90.0})
    assert access.device_sample(owner, sample) == sample
    assert access.device_sample(admin, sample) == sample
    hidden = access.device_sample(other, sample)
    assert hidden.job_id is None and hidden.account_id is None and hidden.fields == sample.fields


def test_owned_rows_are_scoped_to_the_member_and_unscoped_for_admins():
    member, admin = Account(uuid.uuid4(), "m", "member"), Account(uuid.uuid4(), "a", "admin")
    assert access.owner_scope(member) == member.id and access.owner_scope(admin) is None
    assert access.may_see(member, member.id) and not access.may_see(member, uuid.uuid4())
    assert not access.may_see(member, None), "a row of no account is an admin's"
    assert access.may_see(admin, uuid.uuid4()) and access.may_see(admin, None)


def test_the_device_timeline_shows_every_batch_and_names_only_the_callers_jobs(client, make_account, engine):
    from datetime import timedelta

    from sqlalchemy import insert

    from constellation_core.tables import tile_chunks

    owner, other, admin = make_account(), make_account(), make_account("admin")
    job_id = client.post("/jobs", json=job_body(), headers=owner.headers).json()["id"]
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(tile_chunks), [
            {"job_id": job_id, "chunk_no": n, "tiles": 32, "state": "done", "device_uuid": "GPU-T",
             "started_at": now - timedelta(seconds=10 - n), "finished_at": now - timedelta(seconds=9.5 - n)}
            for n in range(3)
        ] + [{"job_id": job_id, "chunk_no": 9, "tiles": 32, "state": "done", "device_uuid": "GPU-T",
              "started_at": now - timedelta(minutes=20), "finished_at": now - timedelta(minutes=20)}])

    def batches(account) -> list[tuple]:
        timeline = client.get("/gpus/timeline", params={"seconds": 60}, headers=account.headers)
        assert timeline.status_code == 200, timeline.text
        return [(b["device_uuid"], b["job_id"], b["tiles"]) for b in timeline.json()["batches"]]

    assert batches(owner) == batches(admin) == [("GPU-T", job_id, 32)] * 3, "the last minute's batches, oldest first"
    assert batches(other) == [("GPU-T", None, 32)] * 3, "the device's work, not whose job"


def test_a_refused_stream_says_why_in_a_problem(client, make_account):
    import pytest
    from starlette.testclient import WebSocketDenialResponse

    owner, other = make_account(), make_account()
    job_id = client.post("/jobs", json=job_body(), headers=owner.headers).json()["id"]
    for url, headers, status, detail in (
        ("/stream", {"Authorization": "Bearer cst_not-a-key"}, 401, "not valid"),
        (f"/stream?job_id={job_id}", other.headers, 404, "no job with id"),
        # A key in the URL ends up in access logs, proxies and browser history: refused, with the way to do it.
        (f"/stream?api_key={owner.key}", {}, 401, "subprotocol `bearer.<key>`"),
    ):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect(url, headers=headers):
                pass
        response = denied.value
        assert response.status_code == status and response.headers["content-type"] == PROBLEM
        assert detail in response.json()["detail"]


def test_a_browser_authenticates_the_stream_with_a_subprotocol_not_the_url(client, make_account):
    """Browsers cannot set headers on a WebSocket: the dashboard offers `["constellation.v1",
    "bearer.<key>"]`; the server selects `constellation.v1` (the key is never echoed back)."""
    owner = make_account()
    with client.websocket_connect("/stream", subprotocols=["constellation.v1", f"bearer.{owner.key}"]) as ws:
        assert ws.accepted_subprotocol == "constellation.v1"
        ws.send_json({"type": "subscribe", "topic": "jobs"})
        assert next_message(ws, what="the answer to a subscribe")["type"] == "subscribed"

"""Per-account limits (issue 12): a member may not take the shared fleet for themselves. Over a limit a
request is refused with the reason and nothing is written; an operator sets an account's limits."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from starlette.testclient import WebSocketDenialResponse

from api.accounts import auth
from constellation_core.tables import jobs
from tests.samples import job_body

PROBLEM = "application/problem+json"


def _set_limits(client, admin, account, **limits):
    answer = client.patch(f"/admin/accounts/{account.id}", json={"limits": limits}, headers=admin.headers)
    assert answer.status_code == 200, answer.text
    auth._valid_keys.clear()  # as if the API's 10 s key cache had expired
    return answer.json()


def _jobs_of(engine, account) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(jobs.c.account_id == account.id)).scalar_one()


def test_a_member_may_not_jump_the_queue_beyond_their_highest_priority(client, make_account, engine):
    member, admin = make_account(), make_account("admin")
    refused = client.post("/jobs", json=job_body(priority=50), headers=member.headers)
    assert refused.status_code == 422 and refused.headers["content-type"] == PROBLEM
    assert "highest, 10" in refused.json()["detail"] and refused.json()["errors"][0]["loc"] == ["body", "priority"]
    assert _jobs_of(engine, member) == 0
    assert client.post("/jobs", json=job_body(priority=50), headers=admin.headers).status_code == 201
    _set_limits(client, admin, member, max_priority=60)
    assert client.post("/jobs", json=job_body(priority=50), headers=member.headers).status_code == 201


def test_too_many_jobs_or_tiles_queued_is_429_with_the_reason(client, make_account, engine):
    member, admin = make_account(), make_account("admin")
    shown = _set_limits(client, admin, member, max_active_jobs=2)
    assert shown["limits"]["max_active_jobs"] == 2 and shown["limit_overrides"]["max_active_jobs"] == 2
    assert shown["limits"]["max_priority"] == 10, "the other limits keep their defaults"
    for _ in range(2):
        assert client.post("/jobs", json=job_body(), headers=member.headers).status_code == 201
    third = client.post("/jobs", json=job_body(), headers=member.headers)
    assert third.status_code == 429 and third.headers["content-type"] == PROBLEM
    assert third.headers["retry-after"] and "jobs queued or running as its limit allows (2)" in third.json()["detail"]
    assert _jobs_of(engine, member) == 2
    # An operator lowers the limit below what the account already has queued: still refused, naming it.
    _set_limits(client, admin, member, max_active_jobs=1)
    lowered = client.post("/jobs", json=job_body(), headers=member.headers)
    assert lowered.status_code == 429 and "as its limit allows (1)" in lowered.json()["detail"]
    assert _jobs_of(engine, member) == 2
    # Tiles: the next job would take the account over its tile limit.
    back = _set_limits(client, admin, member, max_active_jobs=None, max_active_tiles=1)
    assert back["limit_overrides"]["max_active_jobs"] is None and back["limits"]["max_active_jobs"] == 100
    over = client.post("/jobs", json=job_body(), headers=member.headers)
    assert over.status_code == 429 and "limit of 1 tiles" in over.json()["detail"]
    assert _jobs_of(engine, member) == 2


def test_the_tile_limit_counts_the_tiles_left_of_every_queued_job(client, make_account, engine):
    """The load is read from at most `max_active_jobs` of the account's jobs: every one of them counts."""
    member, admin = make_account(), make_account("admin")
    _set_limits(client, admin, member, max_active_jobs=3)
    queued = [client.post("/jobs", json=job_body(), headers=member.headers).json()["tiles_total"] for _ in range(2)]
    new = queued[0]  # the same area again
    _set_limits(client, admin, member, max_active_jobs=3, max_active_tiles=sum(queued) + new - 1)
    over = client.post("/jobs", json=job_body(), headers=member.headers)
    assert over.status_code == 429, over.text
    assert f"the {sum(queued)} of this account's queued or running jobs" in over.json()["detail"]
    _set_limits(client, admin, member, max_active_jobs=3, max_active_tiles=sum(queued) + new)
    assert client.post("/jobs", json=job_body(), headers=member.headers).status_code == 201
    assert _jobs_of(engine, member) == 3


def test_too_many_open_streams_is_429(client, make_account):
    member, admin = make_account(), make_account("admin")
    _set_limits(client, admin, member, max_streams=1)
    with client.websocket_connect("/stream", headers=member.headers):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/stream", headers=member.headers):
                pass
        assert denied.value.status_code == 429 and "1 streams open" in denied.value.json()["detail"]
        job_id = client.post("/jobs", json=job_body(), headers=member.headers).json()["id"]
        logs = client.get(f"/jobs/{job_id}/logs", headers=member.headers)
        assert logs.status_code == 429 and logs.headers["content-type"] == PROBLEM
    with client.websocket_connect("/stream", headers=member.headers):
        pass  # the first one closed: room again


def test_bad_limits_are_a_problem(client, make_account):
    member, admin = make_account(), make_account("admin")
    for limits in ({"max_streams": -1}, {"max_priority": 1000}, {"unknown": 1}):
        answer = client.patch(f"/admin/accounts/{member.id}", json={"limits": limits}, headers=admin.headers)
        assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM, limits

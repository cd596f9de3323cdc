"""Operators manage accounts and keys through /admin (and `constellation admin`): create, disable,
issue, list, revoke — revocation takes effect at once, open streams included (issue 12, defects 4 and 6)."""

from __future__ import annotations

import threading

import pytest
from starlette.websockets import WebSocketDisconnect

from constellation_core.waiting import wait_for
from tests.samples import job_body
from tests.streams import next_message

PROBLEM = "application/problem+json"


def test_only_admins_manage_accounts(client, make_account):
    member = make_account()
    for method, path in (("GET", "/admin/accounts"), ("POST", "/admin/accounts")):
        answer = client.request(method, path, json={"name": "x"}, headers=member.headers)
        assert answer.status_code == 403 and answer.headers["content-type"] == PROBLEM, answer.text
    assert client.get("/admin/accounts").status_code == 401


def test_an_admin_creates_an_account_and_issues_a_key_shown_once(client, make_account):
    admin = make_account("admin")
    created = client.post("/admin/accounts", json={"name": "field-team", "role": "member"}, headers=admin.headers)
    assert created.status_code == 201, created.text
    account = created.json()
    assert account["active_keys"] == 0 and account["disabled_at"] is None
    issued = client.post(f"/admin/accounts/{account['id']}/keys", json={"name": "laptop"}, headers=admin.headers)
    assert issued.status_code == 201, issued.text
    key = issued.json()["key"]
    assert key.startswith(issued.json()["prefix"])
    # The key works, and the listing shows it by prefix and label, never the key itself, with its last use.
    assert client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    listed = client.get(f"/admin/accounts/{account['id']}/keys", headers=admin.headers).json()
    assert [(k["name"], k["prefix"], k["revoked_at"]) for k in listed] == [("laptop", key[:8], None)]
    assert listed[0]["last_used_at"] is not None
    assert key not in client.get(f"/admin/accounts/{account['id']}/keys", headers=admin.headers).text
    names = [a["name"] for a in client.get("/admin/accounts", headers=admin.headers).json()]
    assert "field-team" in names


@pytest.mark.parametrize(("body", "status"), [
    ({"name": "has space"}, 422), ({"name": ""}, 422), ({"name": "ok", "role": "root"}, 422),
    ({"name": "ok", "extra": 1}, 422),
])
def test_bad_account_input_is_a_problem(client, make_account, body, status):
    admin = make_account("admin")
    answer = client.post("/admin/accounts", json=body, headers=admin.headers)
    assert answer.status_code == status and answer.headers["content-type"] == PROBLEM


def test_duplicate_names_unknown_ids_and_self_disable_are_refused(client, make_account):
    admin = make_account("admin")
    assert client.post("/admin/accounts", json={"name": admin.name}, headers=admin.headers).status_code == 409
    unknown = "00000000-0000-0000-0000-000000000000"
    assert client.get(f"/admin/accounts/{unknown}/keys", headers=admin.headers).status_code == 404
    assert client.post(f"/admin/keys/{unknown}/revoke", headers=admin.headers).status_code == 404
    own = client.patch(f"/admin/accounts/{admin.id}", json={"disabled": True}, headers=admin.headers)
    assert own.status_code == 409 and "own account" in own.json()["detail"]


def _key_id(client, admin, account) -> str:
    return client.get(f"/admin/accounts/{account.id}/keys", headers=admin.headers).json()[0]["id"]


def test_a_revoked_key_stops_at_once_and_its_open_socket_closes_with_the_reason(client, make_account):
    admin, member = make_account("admin"), make_account()
    # Used once: the API now remembers the key as valid (its cache), which revocation must not outlive.
    assert client.get("/jobs", headers=member.headers).status_code == 200
    with client.websocket_connect("/stream", headers=member.headers) as ws:
        revoked = client.post(f"/admin/keys/{_key_id(client, admin, member)}/revoke", headers=admin.headers)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        with pytest.raises(WebSocketDisconnect) as closed:
            next_message(ws, what="the socket to close", timeout=1)
    assert closed.value.code == 1008 and "revoked" in closed.value.reason
    refused = client.get("/jobs", headers=member.headers)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_disabling_an_account_ends_its_log_streams_and_its_keys(client, make_account):
    admin, member = make_account("admin"), make_account()
    job_id = client.post("/jobs", json=job_body(), headers=member.headers).json()["id"]
    lines: list[str] = []
    opened = threading.Event()

    def follow() -> None:
        with client.stream("GET", f"/jobs/{job_id}/logs", headers=member.headers) as response:
            opened.set()
            for line in response.iter_lines():
                lines.append(line)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(10)
    wait_for(lambda: any(line.startswith("retry:") for line in lines), timeout=10, what="the log stream to start",
             interval=0.02)
    disabled = client.patch(f"/admin/accounts/{member.id}", json={"disabled": True}, headers=admin.headers)
    assert disabled.status_code == 200 and disabled.json()["disabled_at"]
    reader.join(timeout=2)
    assert not reader.is_alive(), "the SSE stream of a disabled account must end"
    assert "event: revoked" in lines
    assert client.get("/jobs", headers=member.headers).status_code == 401
    enabled = client.patch(f"/admin/accounts/{member.id}", json={"disabled": False}, headers=admin.headers)
    assert enabled.json()["disabled_at"] is None
    assert client.get("/jobs", headers=member.headers).status_code == 200


def test_the_cli_creates_an_account_lists_its_keys_and_revokes_one(client, make_account, monkeypatch):
    import contextlib

    from typer.testing import CliRunner

    from constellation_cli import main as cli

    admin = make_account("admin")
    client.headers["Authorization"] = f"Bearer {admin.key}"
    monkeypatch.setattr(cli, "_client", lambda: contextlib.nullcontext(client))
    runner = CliRunner()
    created = runner.invoke(cli.app, ["admin", "create-account", "cli-made"])
    assert created.exit_code == 0, created.output
    key = next(word for word in created.output.split() if word.startswith("cst_"))
    assert "only time the key is shown" in created.output
    listed = runner.invoke(cli.app, ["admin", "keys", "cli-made"])
    assert listed.exit_code == 0 and key[:8] in listed.output and key not in listed.output
    key_id = client.get("/admin/accounts", headers=admin.headers).json()
    key_id = next(a for a in key_id if a["name"] == "cli-made")["id"]
    key_id = client.get(f"/admin/accounts/{key_id}/keys").json()[0]["id"]
    assert client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    revoked = runner.invoke(cli.app, ["admin", "revoke", key_id])
    assert revoked.exit_code == 0 and "revoked at" in revoked.output
    assert client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    missing = runner.invoke(cli.app, ["admin", "disable", "no-such-account"])
    assert missing.exit_code == 1 and "no account named" in missing.output


def test_the_cli_shows_and_sets_an_accounts_limits(client, make_account, monkeypatch):
    import contextlib

    from typer.testing import CliRunner

    from constellation_cli import main as cli

    admin, member = make_account("admin"), make_account()
    client.headers["Authorization"] = f"Bearer {admin.key}"
    monkeypatch.setattr(cli, "_client", lambda: contextlib.nullcontext(client))
    runner = CliRunner()
    shown = runner.invoke(cli.app, ["admin", "limits", member.name, "--max-streams", "3"])
    assert shown.exit_code == 0, shown.output
    assert "max_streams" in shown.output and "max_priority" in shown.output
    row = next(a for a in client.get("/admin/accounts").json() if a["id"] == str(member.id))
    assert row["limits"]["max_streams"] == 3 and row["limit_overrides"]["max_streams"] == 3
    reset = runner.invoke(cli.app, ["admin", "limits", member.name, "--default", "max_streams"])
    assert reset.exit_code == 0, reset.output
    row = next(a for a in client.get("/admin/accounts").json() if a["id"] == str(member.id))
    assert row["limits"]["max_streams"] == 20 and row["limit_overrides"]["max_streams"] is None

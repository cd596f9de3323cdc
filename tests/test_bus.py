"""The stack's NATS refuses anonymous clients, and each service's user may publish only its own
subjects: no process on the host can read every tenant's events or inject into the browsers' stream
without the stack's credentials."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from constellation_core.bus import without_credentials
from constellation_devstack.nats import NATS_CREDENTIALS_ENV, url_for


def _as(nats_url: str, user: str) -> str:
    passwords = json.loads(Path(os.environ[NATS_CREDENTIALS_ENV]).read_text())
    return url_for(nats_url, user, passwords[user])


def test_nats_refuses_a_client_without_credentials(nats_url):
    async def attempt(url: str) -> None:
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
        await nc.close()

    with pytest.raises(NatsError):
        asyncio.run(attempt(without_credentials(nats_url)))
    with pytest.raises(NatsError):
        asyncio.run(attempt(url_for(nats_url, "api", "not-its-password")))
    asyncio.run(attempt(_as(nats_url, "api")))  # its own password lets it in


async def _delivered(nats_url: str, publisher_url: str, subject: str) -> tuple[bool, list[str]]:
    """Whether a message `publisher_url` sends on `subject` reaches an admin subscriber; the errors
    the server told the publisher."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    listener = await nats.connect(nats_url)
    got = asyncio.Event()

    async def on_message(_msg) -> None:
        got.set()

    await listener.subscribe(subject, cb=on_message)
    await listener.flush()
    sender = await nats.connect(publisher_url, error_cb=on_error)
    await sender.publish(subject, b'{"forged": true}')
    await sender.flush()
    try:
        await asyncio.wait_for(got.wait(), 1.0)
    except TimeoutError:
        pass
    await sender.close()
    await listener.close()
    return got.is_set(), errors


def test_each_service_publishes_only_its_own_subjects(nats_url):
    job_state = "constellation.jobs.00000000-0000-0000-0000-000000000000.state"
    delivered, _ = asyncio.run(_delivered(nats_url, _as(nats_url, "api"), job_state))
    assert delivered, "the API publishes job events"
    for user in ("agent", "dispatcher"):
        delivered, errors = asyncio.run(_delivered(nats_url, _as(nats_url, user), job_state))
        assert not delivered, f"{user} injected a job event"
        assert any("permissions violation" in e.lower() for e in errors), errors
    delivered, _ = asyncio.run(_delivered(nats_url, _as(nats_url, "agent"), "constellation.gpus.GPU-X.metrics"))
    assert delivered, "the GPU agent publishes telemetry"
    delivered, _ = asyncio.run(_delivered(nats_url, _as(nats_url, "dagster"), "constellation.auth.revoked"))
    assert not delivered, "only the API announces revocations"


def test_logged_urls_carry_no_credentials():
    assert without_credentials("nats://s3cret@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert without_credentials("nats://user:pw@nats:4222") == "nats://nats:4222"
    assert without_credentials("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_composes_nats_config_has_the_same_users_and_rights_as_the_demos():
    from constellation_core.settings import REPO_ROOT
    from constellation_devstack.nats import USERS, authorization, compose_password_variable

    committed = (REPO_ROOT / "infra" / "nats" / "nats.conf").read_text()
    expected = authorization({user: "$" + compose_password_variable(user) for user in USERS})
    assert committed.endswith(expected), "regenerate infra/nats/nats.conf from constellation_devstack/nats.py USERS"

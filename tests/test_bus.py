"""The stack's NATS refuses anonymous clients; the token in NATS_URL lets the stack's processes in."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.errors import Error as NatsError

from constellation_core.bus import connect, without_credentials


def test_nats_refuses_a_client_without_the_token(nats_url):
    assert "@" in nats_url, "the test services' NATS_URL carries the token"

    async def attempt(url: str) -> None:
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
        await nc.close()

    with pytest.raises(NatsError):
        asyncio.run(attempt(without_credentials(nats_url)))
    with pytest.raises(NatsError):
        asyncio.run(attempt(without_credentials(nats_url).replace("://", "://not-the-token@", 1)))

    async def with_token() -> bool:
        nc = await connect(nats_url, name="bus-test")
        try:
            return nc.is_connected
        finally:
            await nc.close()

    assert asyncio.run(with_token())


def test_logged_urls_carry_no_credentials():
    assert without_credentials("nats://s3cret@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert without_credentials("nats://user:pw@nats:4222") == "nats://nats:4222"
    assert without_credentials("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"

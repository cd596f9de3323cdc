"""Engines across fork: a forked child never uses its parent's pooled connections (issue 12,
recovery: a run worker forked after a Postgres restart inherited a dead one); and a pooled connection
that died while idle is replaced before use, without a ping before every statement."""

from __future__ import annotations

import asyncio
import os

from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from constellation_core.db import ping_if_in_doubt, sync_engine
from constellation_core.waiting import wait_for


def test_a_forked_child_opens_its_own_connection(database_url):
    engine = sync_engine(database_url)
    with engine.connect() as conn:  # checked out and returned: now pooled in the parent
        parent_backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the backend its query ran on, then leave at once
        try:
            with engine.connect() as conn:
                os.write(write, str(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_backend = int(os.read(read, 64) or b"0")
    os.waitpid(pid, 0)
    assert child_backend and child_backend != parent_backend, "the child reused its parent's pooled connection"
    with engine.connect() as conn:  # and the parent's connection is still good
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == parent_backend


def _terminate(database_url: str, backend: int) -> None:
    """End a backend as a Postgres restart would (it says goodbye and closes its socket); return once
    it is gone."""
    admin = create_engine(database_url, poolclass=NullPool)
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar_one()

    def gone() -> bool:
        with admin.connect() as conn:
            return not conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                                    {"pid": backend}).scalar_one()

    wait_for(gone, timeout=10, what=f"backend {backend} to exit", interval=0.02)
    admin.dispose()


def test_a_pooled_connection_ended_by_the_server_is_replaced_before_use(database_url):
    """At once, not only after it sat idle: a Postgres restart between two statements costs none."""
    engine = ping_if_in_doubt(create_engine(database_url), after_s=60)
    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    _terminate(database_url, first)
    with engine.connect() as conn:  # no error: the dead one was pinged, dropped and replaced
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first
    engine.dispose()


def test_an_async_pool_replaces_a_connection_ended_by_the_server(database_url):
    async def backends() -> tuple[int, int]:
        engine = create_async_engine(database_url)
        ping_if_in_doubt(engine.sync_engine, after_s=60)
        async with engine.connect() as conn:
            first = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        _terminate(database_url, first)
        async with engine.connect() as conn:
            second = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await engine.dispose()
        return first, second

    first, second = asyncio.run(backends())
    assert second != first


def test_a_healthy_connection_back_in_the_pool_moments_ago_is_not_pinged(database_url, monkeypatch):
    """No round trip before each statement of a burst (a run's Dagster event writes, API requests)."""
    engine = ping_if_in_doubt(create_engine(database_url), after_s=60)
    pings = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping",
                        lambda dbapi_connection: pings.append(1) or real_ping(dbapi_connection))
    for _ in range(5):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    assert pings == []
    engine.dispose()

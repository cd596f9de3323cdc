"""Engines across fork: a forked child never uses its parent's pooled connections (issue 12,
recovery: a run worker forked after a Postgres restart inherited a dead one)."""

from __future__ import annotations

import os

from sqlalchemy import text

from constellation_core.db import sync_engine


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

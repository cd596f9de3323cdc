"""An op following its job on the devices is woken by the job's batch commits (Postgres NOTIFY), not by
polling: only its own job's committed batches wake it; otherwise it looks again at its recheck."""

from __future__ import annotations

import time
from uuid import uuid4

from constellation_ray.worker import batches_notified, notify_job


def _waited(wait, timeout_s: float) -> float:
    began = time.monotonic()
    wait(timeout_s)
    return time.monotonic() - began


def test_a_follower_wakes_on_its_jobs_committed_batch_and_nothing_else(engine, database_url):
    job_id, other_job = uuid4(), uuid4()
    with batches_notified(database_url, job_id) as wait:
        with engine.begin() as conn:
            notify_job(conn, other_job)
        assert _waited(wait, 2.0) >= 1.5, "another job's batch woke this follower"

        with engine.connect() as conn, conn.begin() as transaction:
            notify_job(conn, job_id)
            transaction.rollback()
        assert _waited(wait, 2.0) >= 1.5, "a batch that was rolled back woke this follower"

        with engine.begin() as conn:
            notify_job(conn, job_id)
        assert _waited(wait, 30.0) < 10, "its job's committed batch did not wake the follower"

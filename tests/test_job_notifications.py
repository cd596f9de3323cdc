"""An op following its job on the devices is woken by the job's batch commits (Postgres NOTIFY), not by
polling: only its own job's committed batches wake it; otherwise it looks again at its recheck. An idle
device worker likewise sleeps until a job is admitted to its device."""

from __future__ import annotations

import time
from uuid import uuid4

from constellation_ray.worker import WAKE_CHANNEL, _listen, batches_notified, notify_job, wait_notified, wake


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


def test_an_idle_device_worker_sleeps_until_work_comes_for_its_device(engine, database_url):
    listener = _listen(database_url, WAKE_CHANNEL)
    try:
        for_this_device = lambda note: note.payload in ("device-a", "*")  # noqa: E731 - as the worker asks

        def waited(timeout_s: float) -> tuple[bool, float]:
            began = time.monotonic()
            return wait_notified(listener, timeout_s, for_this_device), time.monotonic() - began

        with engine.begin() as conn:
            wake(conn, "device-b")
        woken, seconds = waited(1.5)
        assert not woken and seconds >= 1.4, "work for another device woke this one"

        for device in ("device-a", "*"):
            with engine.begin() as conn:
                wake(conn, device)
            woken, seconds = waited(30.0)
            assert woken and seconds < 10, f"a wake for {device!r} did not end the wait"
    finally:
        listener.close()

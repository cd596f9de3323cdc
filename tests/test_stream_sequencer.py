"""The stream hub puts each job's events back in commit order (`seq`) when NATS delivers them out of
order (two processes publishing), without delaying events that arrive in order; events NATS never
brought (away, or never published) reach its subscribers from Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

import pytest

from api.stream.hub import JobSequencer
from constellation_core.events import Event

JOB, OTHER = uuid.uuid4(), uuid.uuid4()


def event(seq: int | None, job_id=JOB, id_: int | None = None) -> Event:
    return Event(id=id_ or 100 + (seq or 0), type="job.progress", job_id=job_id, payload={}, ts=datetime.now(UTC), seq=seq)


def run(scenario):
    async def main():
        released: list[tuple[uuid.UUID | None, int | None]] = []
        sequencer = JobSequencer(lambda e: released.append((e.job_id, e.seq)), max_wait_s=0.2)

        def accept(e: Event) -> None:
            released.extend((r.job_id, r.seq) for r in sequencer.accept(e))

        await scenario(accept, released)
        return released

    return asyncio.run(main())


def test_in_order_events_pass_at_once_and_a_swapped_pair_comes_out_in_order():
    async def scenario(accept, released):
        accept(event(1))
        accept(event(2))
        assert released == [(JOB, 1), (JOB, 2)]  # nothing waits in the common case
        accept(event(4))  # 3 is still on its way from the other device's process
        accept(event(1, OTHER))  # other jobs are not held up
        assert released[-1] == (OTHER, 1)
        accept(event(3))
        assert [s for j, s in released if j == JOB] == [1, 2, 3, 4]

    run(scenario)


def test_a_gap_that_never_fills_is_given_up_on_after_the_wait_and_a_straggler_still_arrives_once():
    async def scenario(accept, released):
        accept(event(1))
        accept(event(3))
        accept(event(5))
        assert [s for _, s in released] == [1], "3 and 5 wait for 2"
        await asyncio.wait_for(_until(lambda: len(released) == 3), timeout=5)
        assert [s for _, s in released] == [1, 3, 5]
        accept(event(2))  # very late: sent once, out of order (clients order by id)
        accept(event(6))
        assert [s for _, s in released] == [1, 3, 5, 2, 6]

    run(scenario)


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_events_without_a_sequence_pass_straight_through():
    async def scenario(accept, released):
        accept(event(None))
        accept(event(None, job_id=None))
        assert len(released) == 2

    run(scenario)


@pytest.fixture
def running_job(engine, make_account):
    """An account and a running job of it: (owner, job id)."""
    from sqlalchemy import func, insert

    from constellation_core.tables import jobs

    owner = make_account()
    with engine.begin() as conn:
        job_id = conn.execute(insert(jobs).values(
            name="streamed", state="running", submitted_by=owner.name, account_id=owner.id, zoom=12,
            aoi=func.ST_GeomFromText("POLYGON((6 46,6.1 46,6.1 46.1,6 46.1,6 46))", 4326)).returning(jobs.c.id)
        ).scalar_one()
    return owner, job_id


@contextlib.asynccontextmanager
async def listening_hub(nats_url: str, database_url: str, owner):
    """A started hub on NATS and Postgres, and a subscriber of `owner`'s jobs: (hub, subscriber)."""
    import nats as nats_client

    from api.accounts.auth import Account
    from api.stream.hub import StreamHub, Subscriber
    from constellation_core.db import async_engine

    nc = await nats_client.connect(nats_url)
    hub = StreamHub()
    db = async_engine(database_url)
    await hub.start(nc, db)
    subscriber = Subscriber(account=Account(owner.id, owner.name, "member"))
    hub.add(subscriber)
    try:
        yield hub, subscriber
    finally:
        await hub.stop()
        await nc.close()
        await db.dispose()


def queued(subscriber) -> list[Event]:
    got = []
    while not subscriber.queue.empty():
        got.append(subscriber.queue.get_nowait())
    return got


def test_events_committed_while_nats_was_away_reach_subscribers_when_it_is_back(engine, database_url, nats_url,
                                                                               running_job):
    """NATS keeps nothing for a subscriber that is away: when the API's connection comes back, the hub
    reads what was committed meanwhile from Postgres (a job state published before its subscription
    was back would otherwise never reach an open stream)."""
    from constellation_core.events import record_event

    owner, job_id = running_job

    async def main() -> tuple[Event, list[Event]]:
        async with listening_hub(nats_url, database_url, owner) as (hub, subscriber):
            await hub.on_disconnected()
            with engine.begin() as conn:  # committed and published while this API could not hear NATS
                committed = record_event(conn, "job.state", account_id=owner.id, job_id=job_id,
                                         payload={"state": "succeeded"})
            await hub.on_reconnected()
            return committed, queued(subscriber)

    committed, got = asyncio.run(main())
    assert [e.id for e in got] == [committed.id]


def test_an_event_committed_but_never_published_reaches_subscribers_from_postgres(engine, database_url, nats_url,
                                                                                  running_job, monkeypatch):
    """A process killed between its commit and its publish (or one that lost Postgres as it committed)
    never sends its event, with NATS up all along: the hub's periodic look in Postgres fans it out, once;
    an event NATS brought is not read again."""
    import api.stream.hub as hub_module
    from constellation_core.bus import publisher
    from constellation_core.events import record_event

    monkeypatch.setattr(hub_module, "RECONCILE_SETTLE_S", 0.0)
    owner, job_id = running_job

    async def main() -> tuple[Event, Event, list[Event], list[int]]:
        async with listening_hub(nats_url, database_url, owner) as (hub, subscriber):
            with engine.begin() as conn:  # committed and published: NATS brings it
                published = record_event(conn, "job.progress", account_id=owner.id, job_id=job_id,
                                         payload={"tiles_done": 1})
            await asyncio.to_thread(publisher(nats_url).publish, [published])
            await asyncio.to_thread(publisher(nats_url).flush)
            for _ in range(100):  # until NATS has brought it
                if not subscriber.queue.empty():
                    break
                await asyncio.sleep(0.05)
            with engine.begin() as conn:  # committed, never published
                lost = record_event(conn, "job.state", account_id=owner.id, job_id=job_id,
                                    payload={"state": "succeeded"})
            looks = [await hub.reconcile(), await hub.reconcile()]
            return published, lost, queued(subscriber), looks

    published, lost, got, looks = asyncio.run(main())
    assert [e.id for e in got] == [published.id, lost.id]
    assert looks == [1, 0], "the lost event is fanned out once; the published one is not read again"

"""The stream hub fans events out in id order, and an event only once every smaller id has settled
(committed, or rolled back for good): a client's last id is always a place to resume from, even when
a smaller id commits after a larger one (the chaos test once lost a job state so). Events NATS never
brought (it was away, or their process died before publishing) reach subscribers from Postgres;
`GET /events` pages end where every smaller id has settled."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from sqlalchemy import func, insert

from constellation_core.bus import publisher
from constellation_core.events import Event, record_event
from constellation_core.tables import jobs


def _running_job(engine, owner, name: str):
    with engine.begin() as conn:
        return conn.execute(insert(jobs).values(
            name=name, state="running", submitted_by=owner.name, account_id=owner.id, zoom=12,
            aoi=func.ST_GeomFromText("POLYGON((6 46,6.1 46,6.1 46.1,6 46.1,6 46))", 4326)).returning(jobs.c.id)
        ).scalar_one()


@pytest.fixture
def running_job(engine, make_account):
    """An account and a running job of it: (owner, job id)."""
    owner = make_account()
    return owner, _running_job(engine, owner, "streamed")


@pytest.fixture
def other_job(engine, running_job):
    """A second running job of the same owner (its events and the first job's do not share a row lock)."""
    return _running_job(engine, running_job[0], "streamed too")


@contextlib.asynccontextmanager
async def listening_hub(nats_url: str, database_url: str, owner):
    """A started hub on NATS and Postgres (its first look done), and a subscriber of `owner`'s jobs."""
    import nats as nats_client

    from api.accounts.auth import Account
    from api.stream.hub import StreamHub, Subscriber
    from constellation_core.db import async_engine

    nc = await nats_client.connect(nats_url)
    hub = StreamHub()
    db = async_engine(database_url)
    await hub.start(nc, db)
    await hub.position()
    subscriber = Subscriber(account=Account(owner.id, owner.name, "member"))
    hub.add(subscriber)
    try:
        yield hub, subscriber
    finally:
        await hub.stop()
        await nc.close()
        await db.dispose()


async def received(subscriber, count: int, timeout: float = 10.0) -> list[Event]:
    """The next `count` events the subscriber gets, within `timeout` seconds."""
    return [await asyncio.wait_for(subscriber.queue.get(), timeout) for _ in range(count)]


def nothing_within(subscriber, seconds: float):
    async def check() -> None:
        with contextlib.suppress(TimeoutError):
            got = await asyncio.wait_for(subscriber.queue.get(), seconds)
            pytest.fail(f"the subscriber got {got} while an earlier id was still in its transaction")
    return check()


async def publish(nats_url: str, *events: Event) -> None:
    await asyncio.to_thread(publisher(nats_url).publish, list(events))
    await asyncio.to_thread(publisher(nats_url).flush)


def test_an_event_waits_for_a_smaller_id_still_in_its_transaction_and_both_go_out_in_id_order(
        engine, database_url, nats_url, running_job, other_job):
    """Two jobs' events: the first takes its id and is still committing when the second, a larger id,
    commits and is published. Sent at once, a client that then reconnected from the larger id would never
    get the smaller one; the hub holds the larger one until the smaller has committed."""
    owner, job_id = running_job

    async def main() -> tuple[Event, Event, list[Event]]:
        async with listening_hub(nats_url, database_url, owner) as (hub, subscriber):
            with engine.connect() as slow:
                transaction = slow.begin()
                earlier = record_event(slow, "job.state", account_id=owner.id, job_id=job_id,
                                       payload={"state": "succeeded"})
                with engine.begin() as conn:
                    later = record_event(conn, "job.progress", account_id=owner.id, job_id=other_job,
                                         payload={"tiles_done": 1})
                assert later.id > earlier.id
                await publish(nats_url, later)
                await nothing_within(subscriber, 1.5)  # several looks in Postgres: the smaller id is open
                assert await hub.position() < earlier.id
                transaction.commit()
            await publish(nats_url, earlier)
            return earlier, later, await received(subscriber, 2)

    earlier, later, got = asyncio.run(main())
    assert [e.id for e in got] == [earlier.id, later.id]


def test_a_rolled_back_id_does_not_hold_back_the_events_after_it(engine, database_url, nats_url, running_job,
                                                                 other_job):
    owner, job_id = running_job

    async def main() -> tuple[Event, list[Event], float]:
        async with listening_hub(nats_url, database_url, owner) as (hub, subscriber):
            with engine.connect() as conn:
                transaction = conn.begin()
                record_event(conn, "job.log", account_id=owner.id, job_id=job_id, payload={"message": "never"})
                transaction.rollback()
            with engine.begin() as conn:
                later = record_event(conn, "job.progress", account_id=owner.id, job_id=other_job,
                                     payload={"tiles_done": 1})
            sent = time.monotonic()
            await publish(nats_url, later)
            got = await received(subscriber, 1)
            return later, got, time.monotonic() - sent

    later, got, waited = asyncio.run(main())
    assert [e.id for e in got] == [later.id]
    assert waited < 2, f"the gap of a rolled-back id held the next event {waited:.2f} s"


def test_events_committed_while_nats_was_away_reach_subscribers_when_it_is_back(engine, database_url, nats_url,
                                                                               running_job):
    """NATS keeps nothing for a subscriber that is away: when the API's connection comes back, the hub
    reads what was committed meanwhile from Postgres (a job state published before its subscription
    was back would otherwise never reach an open stream)."""
    owner, job_id = running_job

    async def main() -> tuple[Event, list[Event]]:
        async with listening_hub(nats_url, database_url, owner) as (hub, subscriber):
            with engine.begin() as conn:  # committed and published while this API could not hear NATS
                committed = record_event(conn, "job.state", account_id=owner.id, job_id=job_id,
                                         payload={"state": "succeeded"})
            await hub.on_reconnected()
            # At once: the look in Postgres for the last id handed out comes only a tick or two later.
            return committed, await received(subscriber, 1, timeout=0.5)

    committed, got = asyncio.run(main())
    assert [e.id for e in got] == [committed.id]


def test_an_event_committed_but_never_published_reaches_subscribers_from_postgres_once(
        engine, database_url, nats_url, running_job):
    """A process killed between its commit and its publish never sends its event, with NATS up all
    along, and no later event shows the gap: the hub's look in Postgres for the last id handed out finds
    it. An event NATS brought is not sent again."""
    owner, job_id = running_job

    async def main() -> tuple[Event, Event, list[Event]]:
        async with listening_hub(nats_url, database_url, owner) as (hub, subscriber):
            with engine.begin() as conn:  # committed and published: NATS brings it
                published = record_event(conn, "job.progress", account_id=owner.id, job_id=job_id,
                                         payload={"tiles_done": 1})
            await publish(nats_url, published)
            first = await received(subscriber, 1)
            with engine.begin() as conn:  # committed, never published
                lost = record_event(conn, "job.state", account_id=owner.id, job_id=job_id,
                                    payload={"state": "succeeded"})
            second = await received(subscriber, 1)
            await publish(nats_url, published, lost)  # late copies: already out
            await nothing_within(subscriber, 0.5)
            return published, lost, first + second

    published, lost, got = asyncio.run(main())
    assert [e.id for e in got] == [published.id, lost.id]


def test_a_page_of_events_ends_before_an_id_still_in_its_transaction(client, engine, running_job, other_job):
    """A client that polls `GET /events` from its last id never skips an event that committed after a
    later one: the page stops short of the open one, and the next page has both."""
    owner, job_id = running_job
    with engine.connect() as slow:
        transaction = slow.begin()
        earlier = record_event(slow, "job.state", account_id=owner.id, job_id=job_id, payload={"state": "succeeded"})
        with engine.begin() as conn:
            later = record_event(conn, "job.progress", account_id=owner.id, job_id=other_job,
                                 payload={"tiles_done": 1})
        page = client.get("/events", params={"after": earlier.id - 1}, headers=owner.headers)
        assert page.status_code == 200 and page.json()["data"] == [], page.text
        transaction.commit()
    page = client.get("/events", params={"after": earlier.id - 1}, headers=owner.headers).json()
    assert [e["id"] for e in page["data"]] == [earlier.id, later.id]

"""P2: event published by an op → received by WebSocket clients, at a given rate and fan-out.

    make install && .local/venv/bin/constellation-dev with-services -- \
        .local/venv/bin/python bench/p2_stream_latency.py [--clients 50] [--rate 500] [--seconds 10] \
        [--publishers 4] [--baseline REF] [--tracing]

Runs against throwaway Postgres and NATS (`with-services`) and the API under uvicorn. N clients
subscribe to `/stream` (all jobs, as admins). Publishers (`--publishers`, each with a job of its own,
as devices' steps are) send `job.progress` events to JetStream exactly as inference steps do: each
committed to `events` first (`record_event_async`), then sent (`constellation_core.bus.publish_events`,
one event per message) at the given rate in all, each stamped with its send time after its commit;
every client records arrival − send; the API's CPU over the run (its process's user + system time)
per event delivered to a client. Side by
side, a plain NATS subscriber in the client process gives the floor (NATS alone, no API). The API
sends an event only once every smaller event id has settled, so the events must be real rows (before
the stream ordered events by id, P2 published ids that no row had). The clients and the publisher run
on uvloop (as the API does), so that less of the two cores goes to the load itself.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import nats
import uvloop
from served_api import api_cpu_s, checkouts, served_api
from sqlalchemy import create_engine, func, insert
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from constellation_core.accounts import create_account, issue_api_key
from constellation_core.bus import publish_events
from constellation_core.db import async_engine
from constellation_core.events import SUBJECT_ROOT, record_event_async
from constellation_core.tables import jobs
from constellation_core.waiting import free_port
from constellation_devstack.jaeger import JaegerServer

# Every event carries a job's trace context, as an op's do (the API's stream hub then records a fan-out
# span per event it delivers, when its tracing is on).
JOB_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def client(url: str, key: str, job_ids: set[str], latencies: list[float], ready: asyncio.Event,
                 expected: int, dropped: list[str]) -> int:
    received = 0
    async with connect(url, max_queue=None, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        ready.set()
        while received < expected:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=10)
            except TimeoutError:
                break
            except ConnectionClosed as closed:  # e.g. 1013: the API dropped this client as too slow
                dropped.append(f"{closed.rcvd.code} {closed.rcvd.reason[:30]}" if closed.rcvd else "no close frame")
                break
            now = time.time()
            message = json.loads(raw)
            if message.get("job_id") not in job_ids:
                continue
            latencies.append((now - message["payload"]["sent_at"]) * 1000)
            received += 1
    return received


def new_job(database_url: str, account_id: uuid.UUID) -> str:
    """A running job for the bench's events (an event of a job bumps the job's sequence)."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        job_id = conn.execute(insert(jobs).values(
            name="p2", state="running", submitted_by="p2", account_id=account_id, zoom=12,
            aoi=func.ST_GeomFromText("POLYGON((6 46,6.1 46,6.1 46.1,6 46.1,6 46))", 4326)).returning(jobs.c.id)
        ).scalar_one()
    engine.dispose()
    return str(job_id)


async def run(args, base: str, key: str, nats_url: str, database_url: str, account_id: uuid.UUID) -> None:
    ws_url = f"{base.replace('http', 'ws', 1)}/stream"
    job_ids = [new_job(database_url, account_id) for _ in range(args.publishers)]
    db = async_engine(database_url, pool_size=args.publishers)
    total = args.rate * args.seconds
    latencies: list[float] = []
    floor: list[float] = []
    readies = [asyncio.Event() for _ in range(args.clients)]
    dropped: list[str] = []
    clients = [asyncio.create_task(client(ws_url, key, set(job_ids), latencies, ready, total, dropped))
               for ready in readies]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), timeout=60)

    nc = await nats.connect(nats_url)

    async def on_floor(msg) -> None:
        floor.append((time.time() - json.loads(msg.data)["payload"]["sent_at"]) * 1000)

    for job_id in job_ids:
        await nc.subscribe(f"{SUBJECT_ROOT}.jobs.{job_id}.>", cb=on_floor)
    js = nc.jetstream()
    await asyncio.sleep(0.5)  # let the subscriptions settle before the clock starts
    cpu_before = api_cpu_s(base)
    started = time.perf_counter()

    async def publisher(k: int) -> None:  # events k, k + n, k + 2n … of a job of its own, as one device's steps
        for i in range(k, total, args.publishers):
            # Pace to the rate: event i leaves at i / rate seconds.
            delay = started + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with db.begin() as conn:
                event = await record_event_async(conn, "job.progress", account_id=account_id,
                                                 job_id=uuid.UUID(job_ids[k]),
                                                 payload={"tiles_done": i, "tiles_total": total})
            event.payload["sent_at"] = time.time()
            await publish_events(js, [event], traceparent=JOB_TRACEPARENT)

    await asyncio.gather(*(publisher(k) for k in range(args.publishers)))
    sent_in = time.perf_counter() - started
    received = await asyncio.gather(*clients)
    api_cpu = api_cpu_s(base) - cpu_before
    await nc.drain()
    await db.dispose()

    print(f"{args.clients} clients, {total} events at {args.rate}/s from {args.publishers} publishers "
          f"(sent in {sent_in:.1f} s), "
          f"{os.cpu_count()} cores shared by API, NATS, Postgres, publisher and clients")
    for name, values in (("NATS alone (floor)", floor), ("op event → WebSocket", latencies)):
        if values:
            print(f"{name:<22} p50 {statistics.median(values):7.1f} ms   p99 {percentile(values, 0.99):7.1f} ms   "
                  f"max {max(values):7.1f} ms   (n={len(values)})")
    delivered = sum(received)
    if dropped:
        print(f"{len(dropped)} of {args.clients} clients closed by the API: {sorted(set(dropped))[:3]}")
    print(f"the API's CPU {api_cpu:.1f} s, {1e6 * api_cpu / max(delivered, 1):.1f} µs per event delivered to a client")
    print(f"delivered {delivered} of {total * args.clients} ({delivered / (total * args.clients):.1%}); "
          f"goal: p99 ≤ 100 ms at 500 events/s with 50 clients")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--publishers", type=int, default=4,
                        help="concurrent writers, each committing and publishing a job's events (as devices do)")
    parser.add_argument("--baseline", help="a commit whose API to measure the same way first, side by side")
    parser.add_argument("--tracing", action="store_true",
                        help="run with the API's tracing off, then on (spans to a Jaeger of its own)")
    args = parser.parse_args()
    database_url, nats_url = os.environ.get("DATABASE_URL"), os.environ.get("NATS_URL")
    if not database_url or not os.environ.get("CONSTELLATION_TEST_PG_ADMIN_URL"):
        raise SystemExit("run under `constellation-dev with-services -- ...` (throwaway Postgres and NATS)")
    engine = create_engine(database_url)
    with engine.begin() as conn:
        account_id = create_account(conn, f"p2-{uuid.uuid4().hex[:6]}", "admin")
        key = issue_api_key(conn, account_id)
    engine.dispose()
    with checkouts(args.baseline) as sources:
        if not args.tracing:
            for label, source in sources:
                print(f"-- {label}")
                with served_api(source=source) as base:
                    uvloop.run(run(args, base, key, nats_url, database_url, account_id))
            return
        jaeger = JaegerServer(Path(tempfile.mkdtemp(prefix="constellation-p2-")), free_port(), free_port(),
                              free_port(), free_port())
        jaeger.start()
        try:
            for (label, source), (tracing, env) in itertools.product(
                    sources, (("tracing off", {"OTEL_SDK_DISABLED": "true"}), ("tracing on", jaeger.otel_env()))):
                print(f"-- {label}, the API with {tracing}")
                with served_api(source=source, env=env) as base:
                    uvloop.run(run(args, base, key, nats_url, database_url, account_id))
        finally:
            jaeger.stop()


if __name__ == "__main__":
    main()

"""`/healthz` latency while hostile clients run, against the same probe with nothing else going on.

Issue 12: "no request may stall other requests". Starts the API (this checkout, and with
`--baseline REF` also that commit's code, side by side on the same database) and for each: probes
`GET /healthz` back to back for `--seconds`, idle; then again while clients send, in a loop, what
froze the API before — a thin diagonal sliver at zoom 18 (`POST /jobs/estimate`), a 20,000-vertex
polygon, a FeatureCollection of 900 polygons, coordinates nested 400 deep — a client opens and
drops WebSockets on `/stream`, and one submits ten jobs on the 20,000-vertex polygon and then lists
them (`GET /jobs`, each job carrying its area). Each hostile client is its own process at the lowest CPU priority (they
stand for other machines). Prints p50 / p99 / max of the probe and how many hostile requests were
answered (by status). Goal: p99 ≤ 50 ms during the mix.

    .local/venv/bin/constellation-dev with-services -- .local/venv/bin/python bench/hostile_mix.py --baseline 34a39bb
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import time
import uuid
from collections import Counter

import httpx
from served_api import checkouts, served_api
from sqlalchemy import create_engine
from websockets.sync.client import connect as ws_connect

from constellation_core.accounts import create_account, issue_api_key
from constellation_core.settings import get_settings
from constellation_core.waiting import wait_for


def _ring(points: list[tuple[float, float]]) -> list[list[float]]:
    return [list(p) for p in points] + [list(points[0])]


def hostile_bodies() -> dict[str, dict]:
    sliver = _ring([(6.0, 46.0), (6.3, 46.3), (6.3001, 46.3), (6.0001, 46.0)])
    circle = _ring([(6.15 + 0.05 * math.cos(2 * math.pi * i / 20_000), 46.2 + 0.03 * math.sin(2 * math.pi * i / 20_000))
                    for i in range(20_000)])
    squares = [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [_ring(
        [(6.0 + (i % 30) * 0.01, 46.0 + (i // 30) * 0.01), (6.005 + (i % 30) * 0.01, 46.0 + (i // 30) * 0.01),
         (6.005 + (i % 30) * 0.01, 46.005 + (i // 30) * 0.01), (6.0 + (i % 30) * 0.01, 46.005 + (i // 30) * 0.01)])]}}
        for i in range(900)]
    nested: list = [6.1, 46.2]
    for _ in range(400):
        nested = [nested]
    return {
        "sliver z18": {"zoom": 18, "area": {"type": "Polygon", "coordinates": [sliver]}},
        "20k vertices": {"zoom": 12, "area": {"type": "Polygon", "coordinates": [circle]}},
        "900 features": {"zoom": 12, "area": {"type": "FeatureCollection", "features": squares}},
        "nested 400": {"zoom": 12, "area": {"type": "Polygon", "coordinates": nested}},
    }


def probe(base: str, seconds: float) -> list[float]:
    latencies = []
    with httpx.Client(base_url=base, timeout=120) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get("/healthz").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    return latencies


def _hostile(base: str, key: str, name: str, body: dict, stop, answers) -> None:
    os.nice(CLIENT_NICENESS)
    with httpx.Client(base_url=base, timeout=300, headers={"Authorization": f"Bearer {key}"}) as client:
        while not stop.is_set():
            answers.put(f"{name}: {client.post('/jobs/estimate', json=body).status_code}")


def _listing(base: str, key: str, stop, answers) -> None:
    """Ten jobs on the 20k-vertex area, then their page, again and again (each job carries its area)."""
    os.nice(CLIENT_NICENESS)
    body = {"name": "detailed", **hostile_bodies()["20k vertices"]}
    with httpx.Client(base_url=base, timeout=300, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(10):
            answers.put(f"POST /jobs 20k vertices: {client.post('/jobs', json=body).status_code}")
        while not stop.is_set():
            answers.put(f"GET /jobs of 20k-vertex jobs: {client.get('/jobs', params={'limit': 10}).status_code}")


def _sockets(base: str, key: str, stop, answers) -> None:
    os.nice(CLIENT_NICENESS)
    url = base.replace("http://", "ws://") + "/stream"
    while not stop.is_set():
        try:
            with ws_connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30):
                answers.put("websocket opened")
        except Exception as exc:  # noqa: BLE001 - counted, the bench goes on
            answers.put(f"websocket: {type(exc).__name__}")


# The hostile clients stand for other machines: on this one they must not take the API's CPU from it
# (their own JSON encoding is not the API's cost). The probe runs at normal priority.
CLIENT_NICENESS = 19


def measure(base: str, key: str, seconds: float) -> tuple[list[float], list[float], Counter]:
    """The probe idle, then with every hostile client running, each in its own process (a client
    encoding a megabyte of JSON would otherwise hold the probe's GIL and slow the probe, not the API)."""
    idle = probe(base, seconds)
    context = multiprocessing.get_context("spawn")
    stop, answers = context.Event(), context.Queue()
    clients = [context.Process(target=_hostile, args=(base, key, name, body, stop, answers), daemon=True)
               for name, body in hostile_bodies().items()]
    clients.append(context.Process(target=_sockets, args=(base, key, stop, answers), daemon=True))
    clients.append(context.Process(target=_listing, args=(base, key, stop, answers), daemon=True))
    for client in clients:
        client.start()
    wait_for(lambda: answers.qsize() >= len(clients), timeout=120, what="every hostile client's first answer")
    busy = probe(base, seconds)
    stop.set()
    counted: Counter = Counter()
    for client in clients:
        client.join(timeout=300)
    while not answers.empty():
        counted[answers.get()] += 1
    return idle, busy, counted


def _summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"n={len(ordered):5d}  p50 {pick(0.5):7.1f} ms  p99 {pick(0.99):8.1f} ms  max {ordered[-1] * 1000:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--baseline", help="a commit whose API to measure the same way, side by side")
    args = parser.parse_args()
    engine = create_engine(get_settings().sync_database_url)
    with engine.begin() as conn:
        key = issue_api_key(conn, create_account(conn, f"hostile-{uuid.uuid4().hex[:6]}"))
    engine.dispose()
    with checkouts(args.baseline) as sources:
        for label, source in sources:
            with served_api(source=source) as base:
                idle, busy, answers = measure(base, key, args.seconds)
            print(f"{label}")
            print(f"  /healthz idle           {_summary(idle)}")
            print(f"  /healthz hostile mix    {_summary(busy)}")
            print("  hostile requests answered: " + ", ".join(f"{k} ×{v}" for k, v in sorted(answers.items())))

if __name__ == "__main__":
    main()

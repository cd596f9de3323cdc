"""Imagery tiles: latency of `GET /jobs/{id}/imagery/{z}/{x}/{y}.png` as a map asks for them.

    make install && .local/venv/bin/constellation-dev with-services -- \\
        .local/venv/bin/python bench/imagery_tiles.py [--workers 1] [--concurrency 8] [--zooms 11-16]

Runs against throwaway Postgres and NATS (`with-services`) with the API under uvicorn. A member submits
a job over Geneva (no dispatcher runs: it stays queued; its imagery is the demo scene), then fetches
every tile covering the area at each zoom, as a map would: first cold (each tile rendered by rio-tiler
in a worker thread), then warm (the same tiles again, from the API's tile cache), `--concurrency` at
once. Prints p50/p95/p99 and max per pass. Goal: p95 ≤ 100 ms warm.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import httpx
import mercantile
from served_api import served_api
from sqlalchemy import create_engine

from constellation_core.accounts import create_account, issue_api_key

GENEVA = {"type": "Polygon", "coordinates": [[[6.10, 46.18], [6.19, 46.18], [6.19, 46.23], [6.10, 46.23], [6.10, 46.18]]]}


async def fetch_all(base: str, key: str, paths: list[str], concurrency: int) -> list[float]:
    limit = asyncio.Semaphore(concurrency)
    timings: list[float] = []

    async def one(client: httpx.AsyncClient, path: str) -> None:
        async with limit:
            started = time.perf_counter()
            response = await client.get(path)
            timings.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200 or response.headers["content-type"] != "image/png":
                raise SystemExit(f"{path}: {response.status_code} {response.text[:200]}")

    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        await asyncio.gather(*(one(client, path) for path in paths))
    return timings


def summary(timings: list[float]) -> str:
    q = statistics.quantiles(timings, n=100)
    return (f"{len(timings):5d} tiles   p50 {q[49]:7.1f} ms   p95 {q[94]:7.1f} ms   p99 {q[98]:7.1f} ms   "
            f"max {max(timings):7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (`make demo` runs one)")
    parser.add_argument("--concurrency", type=int, default=8, help="tiles in flight, as a map view asks")
    parser.add_argument("--zooms", default="11-16")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL") or not os.environ.get("CONSTELLATION_TEST_PG_ADMIN_URL"):
        raise SystemExit("run under `constellation-dev with-services -- ...` (throwaway Postgres and NATS)")
    low, high = map(int, args.zooms.split("-"))
    engine = create_engine(os.environ["DATABASE_URL"])
    with engine.begin() as conn:
        key = issue_api_key(conn, create_account(conn, "imagery-bench", "member"))
    engine.dispose()
    west, south, east, north = 6.10, 46.18, 6.19, 46.23
    tiles = [t for z in range(low, high + 1) for t in mercantile.tiles(west, south, east, north, zooms=z)]
    with served_api(workers=args.workers, env={"OTEL_SDK_DISABLED": "true"}) as base:
        job = httpx.post(f"{base}/jobs", json={"name": "imagery bench", "zoom": 14, "area": GENEVA},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30).raise_for_status().json()["id"]
        paths = [f"/jobs/{job}/imagery/{t.z}/{t.x}/{t.y}.png" for t in tiles]
        httpx.get(f"{base}/jobs/{job}/imagery/tilejson.json", headers={"Authorization": f"Bearer {key}"},
                  timeout=60).raise_for_status()  # writes the demo scene once
        cold = asyncio.run(fetch_all(base, key, paths, args.concurrency))
        warm = asyncio.run(fetch_all(base, key, paths, args.concurrency))
    print(f"uvicorn workers {args.workers}, {args.concurrency} tiles in flight, zooms {low}–{high} over Geneva "
          f"(the demo scene), {os.cpu_count()} cores shared by everything")
    print(f"cold (rendered)   {summary(cold)}")
    print(f"warm (cached)     {summary(warm)}   (goal: p95 ≤ 100 ms)")
    if args.workers > 1:
        print("(each uvicorn worker keeps its own cache: a warm tile a worker has not rendered yet renders there)")


if __name__ == "__main__":
    main()

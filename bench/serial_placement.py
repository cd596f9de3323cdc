"""Where serial jobs go: small jobs submitted behind one big job, all of the same priority.

With `make demo` running (two devices or more) and its seeded jobs done:

    .local/venv/bin/python bench/serial_placement.py [--small 8]

It waits until Dagster is idle, submits one big serial job (~4,300 tiles) and then `--small` small ones
(~100 tiles each), waits for all, and prints each small job's device and its wait from submission to its
first batch (`tile_chunks.started_at`), then the small jobs' median and longest wait. The dispatcher
binds a serial job to one device when it launches it: a small job bound to the big job's device waits
for the big job's batches (a device worker takes the batches of the oldest job of a priority first).
"""

from __future__ import annotations

import argparse
import statistics
from datetime import UTC, datetime

from demo_client import demo_api, wait_dagster_idle, wait_finished
from shapely.geometry import box, mapping
from sqlalchemy import create_engine, text

from constellation_core.settings import get_settings

BIG = box(6.10, 46.18, 6.155, 46.205), 19  # ~4,300 tiles (the API's default cap is 5,000)
SMALL_ZOOM = 18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=8)
    args = parser.parse_args()
    settings = get_settings()
    smalls = [(box(6.12 + 0.004 * i, 46.19, 6.132 + 0.004 * i, 46.198), SMALL_ZOOM)  # ~100 tiles each
              for i in range(args.small)]
    with demo_api(settings) as client:
        wait_dagster_idle(settings)
        submitted = {}
        for name, (area, zoom) in [("big", BIG)] + [(f"small {i}", a) for i, a in enumerate(smalls)]:
            created = client.post("/jobs", json={"name": f"placement {name}", "zoom": zoom, "area": mapping(area),
                                                 "mode": "serial", "priority": 0}).raise_for_status().json()
            submitted[created["id"]] = (name, created["tiles_total"], datetime.now(UTC))
        states = wait_finished(client, list(submitted), timeout=1800)
    if any(state != "succeeded" for state in states.values()):
        raise SystemExit(f"jobs did not succeed: {states}")
    engine = create_engine(settings.sync_database_url)
    with engine.connect() as conn:
        first = {row.job_id: row for row in conn.execute(text(
            "SELECT c.job_id::text AS job_id, min(c.started_at) AS started, min(g.name) AS device "
            "FROM tile_chunks c JOIN gpus g ON g.uuid = c.device_uuid "
            "WHERE c.job_id = ANY(CAST(:ids AS uuid[])) GROUP BY c.job_id"), {"ids": list(submitted)})}
    engine.dispose()
    waits = []
    for job_id, (name, tiles, at) in submitted.items():
        wait = (first[job_id].started - at).total_seconds()
        if name != "big":
            waits.append(wait)
        print(f"{name:9s} {tiles:6d} tiles  on {first[job_id].device:45s} first batch after {wait:6.2f} s")
    print(f"small jobs: first batch after p50 {statistics.median(waits):.2f} s, max {max(waits):.2f} s")


if __name__ == "__main__":
    main()

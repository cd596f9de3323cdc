"""P1b: how long a device sits idle between queued jobs under a backlog.

With `make demo` running: `.local/venv/bin/python bench/device_idle.py --jobs 8`. Submits N serial
jobs at once, waits for all, then reads each device's inference steps from `steps` and prints the
gaps on each device between one job's last batch ending and the next job's first batch starting
(the wall-clock bounds each inference step records in `steps.metrics`), p50, p95, max.
"""

from __future__ import annotations

import argparse
import statistics

from demo_client import GENEVA, demo_api, wait_finished
from sqlalchemy import create_engine, text

from constellation_core.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--zoom", type=int, default=16)
    args = parser.parse_args()
    settings = get_settings()
    with demo_api(settings) as client:
        ids = [
            client.post("/jobs", json={"name": f"P1b {i}", "zoom": args.zoom, "area": GENEVA, "mode": "serial"})
            .raise_for_status().json()["id"]
            for i in range(args.jobs)
        ]
        wait_finished(client, ids, timeout=900)
    engine = create_engine(settings.sync_database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT g.name, (s.metrics->>'first_batch_at')::float8 AS first_batch, "
                 "(s.metrics->>'last_batch_at')::float8 AS last_batch FROM steps s JOIN gpus g ON g.id = s.gpu_id "
                 "WHERE s.job_id = ANY(:ids) AND s.tiles > 0 ORDER BY g.name, 2"),
            {"ids": ids},
        ).all()
    engine.dispose()
    gaps: list[float] = []
    for before, after in zip(rows, rows[1:]):
        if before.name == after.name:
            gaps.append(after.first_batch - before.last_batch)
    gaps.sort()
    print(f"{args.jobs} serial jobs (zoom {args.zoom}) on {len({r.name for r in rows})} devices, "
          f"{len(gaps)} gaps between consecutive steps on a device")
    print(f"idle gap  p50 {statistics.median(gaps):5.2f} s   p95 {gaps[round(0.95 * (len(gaps) - 1))]:5.2f} s   "
          f"max {gaps[-1]:5.2f} s   (goal ≤ 0.5 s)")


if __name__ == "__main__":
    main()

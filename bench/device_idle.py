"""P1b: how long a device sits idle between queued jobs under a backlog.

With `make demo` running: `.local/venv/bin/python bench/device_idle.py --jobs 8`. Submits N serial
jobs at once, waits for all, then reads every batch's interval on its device (`tile_chunks.started_at /
finished_at`) and prints the gaps on each device between one job's last batch ending and the next
job's first batch starting, p50, p95, max (the gaps the GPUs page's device timeline shows).
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
            text("SELECT device_uuid AS device, job_id, started_at, finished_at FROM tile_chunks "
                 "WHERE job_id = ANY(CAST(:ids AS uuid[])) ORDER BY device_uuid, started_at"),
            {"ids": ids},
        ).all()
    engine.dispose()
    gaps: list[float] = []
    for before, after in zip(rows, rows[1:]):
        if before.device == after.device and before.job_id != after.job_id:
            gaps.append((after.started_at - before.finished_at).total_seconds())
    gaps.sort()
    print(f"{args.jobs} serial jobs (zoom {args.zoom}) on {len({r.device for r in rows})} devices, "
          f"{len(gaps)} gaps between one job's last batch and the next job's first on a device")
    if not gaps:
        raise SystemExit("no device ran two of these jobs one after the other: pass more --jobs than devices")
    print(f"idle gap  p50 {statistics.median(gaps):5.2f} s   p95 {gaps[round(0.95 * (len(gaps) - 1))]:5.2f} s   "
          f"max {gaps[-1]:5.2f} s   (goal: p50 ≤ 0.05 s, max ≤ 0.2 s)")


if __name__ == "__main__":
    main()

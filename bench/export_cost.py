"""What one Parquet export of a day's tile results costs, against the demo's data: a full export
(the day read from Postgres and written whole: what every export did before exports became
incremental, and what the first export of a day still does) side by side with an incremental one
after `--jobs` jobs got new results (the day's file carried over, those jobs read again).

With `make demo` running (the busier the day, the larger the gap):
`.local/venv/bin/python bench/export_cost.py [--day YYYY-MM-DD] [--jobs 40] [--rounds 3]`.
It writes into a temporary folder, never into the demo's exports. CPU is this process's (user +
system); Postgres's own work shows in the wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from constellation_core.settings import get_settings
from constellation_dagster.analytics.assets import EXPORTED_JOBS_KEY, export_tile_results
from constellation_dagster.resources import SystemOfRecord


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(db: SystemOfRecord, day: str, path: Path) -> tuple[float, float, int, int]:
    cpu, wall = cpu_s(), time.perf_counter()
    with db.snapshot() as conn:
        rows, jobs_read = export_tile_results(conn, day, path)
    return cpu_s() - cpu, time.perf_counter() - wall, rows, jobs_read


def forget(path: Path, jobs: int) -> None:
    """Make the file forget its last `jobs` jobs' marks, as if they had new results since."""
    table = pq.ParquetFile(path).read()
    marks = json.loads(table.schema.metadata[EXPORTED_JOBS_KEY])
    for job in sorted(marks, key=lambda job: marks[job][1])[-jobs:]:
        marks[job] = [0, 0]
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata,
                                                   EXPORTED_JOBS_KEY: json.dumps(marks).encode()}), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--day", default=datetime.now(UTC).strftime("%Y-%m-%d"))
    parser.add_argument("--jobs", type=int, default=40, help="jobs with new results before the incremental export")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import geopandas  # noqa: F401 - imported once, outside the figures

    db = SystemOfRecord(database_url=get_settings().database_url)
    full, incremental = [], []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "part-0.parquet"
        for _ in range(args.rounds):
            path.unlink(missing_ok=True)
            full.append(timed(db, args.day, path))
            forget(path, args.jobs)
            incremental.append(timed(db, args.day, path))
            assert incremental[-1][2] == full[-1][2], "the incremental export must hold the same rows"
    print(f"day {args.day}: {full[0][2]} tile results; median of {args.rounds} rounds")
    for label, runs in (("full export (before)", full), (f"incremental, {args.jobs} jobs new", incremental)):
        print(f"{label:28} CPU {statistics.median(r[0] for r in runs):6.2f} s   "
              f"wall {statistics.median(r[1] for r in runs):6.2f} s   jobs read {runs[0][3]}")
    ratio = statistics.median(r[0] for r in full) / statistics.median(r[0] for r in incremental)
    print(f"CPU ratio full ÷ incremental: {ratio:.1f}×")


if __name__ == "__main__":
    main()

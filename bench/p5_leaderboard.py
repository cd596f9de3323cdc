"""P5: GET /usage/leaderboard latency over 1,000,000 runs.

    make install && .local/venv/bin/constellation-dev with-services -- \
        .local/venv/bin/python bench/p5_leaderboard.py [--runs 1000000] [--seconds 15]

Seeds throwaway Postgres (`with-services`) with 200 accounts, runs/10 jobs and `--runs` finished runs
spread over 60 days (the triggers of migration 0004 keep usage_daily as they go), starts the Go usage
service on it and loads GET /usage/leaderboard (month window, by GPU-seconds) with wrk. Side by side,
the baseline: the same leaderboard computed straight from runs and jobs (what usage_go did before
usage_daily), timed in Postgres.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

import httpx
from p3_submit_throughput import run_wrk
from sqlalchemy import create_engine, text

from constellation_core.accounts import create_account, issue_api_key
from constellation_core.settings import REPO_ROOT
from constellation_core.waiting import free_port, wait_for

SEED = """
INSERT INTO accounts (name, role) SELECT 'p5-account-' || i, 'member' FROM generate_series(1, 200) i
ON CONFLICT (name) DO NOTHING;
"""
SEED_JOBS = """
INSERT INTO jobs (name, submitted_by, account_id, aoi, zoom, state, created_at)
SELECT 'p5', a.name, a.id, ST_GeomFromText('POLYGON((6.1 46.1,6.2 46.1,6.2 46.2,6.1 46.2,6.1 46.1))', 4326), 14,
       'succeeded', now() - make_interval(days => ((g / 200) % 60)::int)
FROM generate_series(1, :jobs) g
JOIN (SELECT id, name, row_number() OVER (ORDER BY name) AS n FROM accounts WHERE name LIKE 'p5-account-%') a
  ON a.n = 1 + (g * 7919) % 200
"""
SEED_RUNS = """
INSERT INTO runs (job_id, dagster_run_id, state, started_at, finished_at, metrics)
SELECT j.id, 'p5-' || j.id || '-' || k, 'succeeded', j.created_at, j.created_at + interval '40 seconds',
       jsonb_build_object('gpu_seconds', 10 + (k * 13) % 50, 'energy_joules', 2000 + k, 'tiles', 100)
FROM (SELECT id, created_at FROM jobs WHERE name = 'p5' ORDER BY id OFFSET :offset LIMIT :limit) j,
     generate_series(1, 10) k
"""
BASELINE = """
SELECT a.id, a.name, sum(coalesce((r.metrics->>'gpu_seconds')::float8,
                                  extract(epoch FROM r.finished_at - r.started_at))) AS gpu_seconds
FROM runs r JOIN jobs j ON j.id = r.job_id JOIN accounts a ON a.id = j.account_id
WHERE r.finished_at IS NOT NULL AND r.started_at >= now() - interval '30 days'
GROUP BY a.id, a.name ORDER BY 3 DESC, a.name LIMIT 10
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url or not os.environ.get("CONSTELLATION_TEST_PG_ADMIN_URL"):
        raise SystemExit("run under `constellation-dev with-services -- ...` (throwaway Postgres and NATS)")
    engine = create_engine(database_url)
    jobs = args.runs // 10
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(SEED))
        conn.execute(text(SEED_JOBS), {"jobs": jobs})
    for offset in range(0, jobs, 10_000):
        with engine.begin() as conn:
            conn.execute(text(SEED_RUNS), {"offset": offset, "limit": 10_000})
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
        runs = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
        rollup_rows = conn.execute(text("SELECT count(*) FROM usage_daily")).scalar_one()
    seeded_in = time.perf_counter() - started

    baseline = []
    with engine.connect() as conn:
        for _ in range(5):
            t0 = time.perf_counter()
            conn.execute(text(BASELINE)).all()
            baseline.append((time.perf_counter() - t0) * 1000)
    engine.dispose()

    # usage_go answers only callers with a key (the API forwards its caller's); an admin sees every account.
    engine = create_engine(database_url)
    with engine.begin() as conn:
        admin = {"Authorization": f"Bearer {issue_api_key(conn, create_account(conn, f'p5-{time.time_ns()}', 'admin'))}"}
    engine.dispose()
    port = free_port()
    usage = subprocess.Popen([str(REPO_ROOT / "usage_go" / "bin" / "usage")],
                             env={**os.environ, "USAGE_PORT": str(port)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, timeout=30, what="usage ready")
        url = f"{base}/usage/leaderboard?window=month&metric=gpu_seconds&limit=10"
        board = httpx.get(url, headers=admin).json()
        run_wrk(url, None, 3, 8, admin)  # warm-up
        loads = {c: run_wrk(url, None, args.seconds, c, admin) for c in args.connections}
    finally:
        usage.terminate()
        usage.wait(10)
    print(f"seeded {runs} runs, {jobs} jobs, 200 accounts over 60 days in {seeded_in:.0f} s "
          f"(usage_daily: {rollup_rows} rows); {os.cpu_count()} cores")
    print(f"top account by GPU-seconds this month: {board['data'][0]['account_name']} "
          f"{board['data'][0]['gpu_seconds']:.0f} s")
    print(f"baseline: leaderboard from runs+jobs  median {statistics.median(baseline):7.1f} ms  (5 runs, in Postgres)")
    for connections, figures in loads.items():
        print(f"GET /usage/leaderboard, {connections:>2} connections  {figures['rps']:6.0f} req/s  "
              f"p50 {figures['p50_ms']:5.1f} ms  p90 {figures['p90_ms']:5.1f} ms  p99 {figures['p99_ms']:5.1f} ms  "
              f"non-2xx {figures['non_2xx']:.0f}")
    print("goal: p99 ≤ 20 ms")


if __name__ == "__main__":
    main()

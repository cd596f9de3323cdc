"""P3: POST /jobs throughput and latency under load from wrk, on loopback.

    make install && .local/venv/bin/constellation-dev with-services -- \
        .local/venv/bin/python bench/p3_submit_throughput.py [--workers 2] [--seconds 20] [--connections 64] \
        [--baseline REF] [--tracing [--sample-ratio R]]

Runs against throwaway Postgres+PostGIS and NATS (`with-services`), with the API under uvicorn (N
worker processes) and wrk (Debian's `wrk`, installed if missing) as the load. Each request is a real
submission: API-key check, GeoJSON validation, tile planning, job + event rows, a JetStream publish.
No dispatcher runs, so no Dagster run is launched. Side by side, the same server's GET /healthz (no
database) is the ceiling this machine allows for any endpoint. Prints requests/s and p50/p90/p99.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from served_api import api_cpu_s, checkouts, served_api
from sqlalchemy import create_engine, func, select, text, update

from constellation_core.accounts import create_account, issue_api_key
from constellation_core.tables import accounts, jobs
from constellation_core.waiting import free_port
from constellation_devstack.jaeger import JaegerServer

BODY = ('{"name": "p3", "zoom": 14, "mode": "serial", "area": {"type": "Polygon", "coordinates": '
        '[[[6.10, 46.18], [6.12, 46.18], [6.12, 46.20], [6.10, 46.20], [6.10, 46.18]]]}}')


def ensure_wrk() -> str:
    if shutil.which("wrk"):
        return "wrk"
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
        return "wrk"
    raise SystemExit("wrk is missing: apt-get install wrk")


def run_wrk(url: str, script: Path | None, seconds: int, connections: int,
            headers: dict[str, str] | None = None) -> dict[str, float]:
    command = [ensure_wrk(), f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script:
        command += ["-s", str(script)]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "90", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()
        figures[f"p{pct}_ms"] = float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = float(errors.group(1)) if errors else 0.0
    figures["requests"] = float(re.search(r"(\d+) requests in", out).group(1))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--baseline", help="a commit whose API to measure the same way, side by side")
    parser.add_argument("--tracing", action="store_true",
                        help="measure with tracing off and on (spans to a Jaeger of its own), side by side")
    parser.add_argument("--sample-ratio", type=float, default=None,
                        help="with --tracing: the API samples this share of requests that come without a trace "
                             "context (OTEL_TRACES_SAMPLER=parentbased_traceidratio), instead of every one")
    parser.add_argument("--member", action="store_true",
                        help="submit as a member whose limits an operator raised to let the run queue everything it "
                             "submits (each submission then checks the account's whole backlog against them), "
                             "instead of an account without limits (an admin: no load to check)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the runs this many times (off, on, off, on, …): this machine's speed drifts")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url or not os.environ.get("CONSTELLATION_TEST_PG_ADMIN_URL"):
        raise SystemExit("run under `constellation-dev with-services -- ...` (throwaway Postgres and NATS)")

    engine = create_engine(database_url)
    tmp = Path(tempfile.mkdtemp(prefix="constellation-p3-"))

    def submission_script(phase: int) -> Path:
        """wrk's script for one phase, on empty tables, as an account of its own: a submission counts its
        account's queued jobs (the limits) and writes into tables that grow, so phases sharing them would
        each run slower than the one before — and tracing (measured after "off" in a round) look costlier."""
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE jobs, events CASCADE"))
            # A member's default limits (100 active jobs) would turn most of the load into 429s: P3 measures
            # submission, as a pipeline's account without limits would submit (nothing is dispatched, so the
            # account's queue grows by every submission); `--member`: one whose limits let it queue all of them.
            account_id = create_account(conn, f"p3-bench-{phase}", "member" if args.member else "admin")
            if args.member:
                conn.execute(update(accounts).where(accounts.c.id == account_id)
                             .values(limits={"max_active_jobs": 1_000_000, "max_active_tiles": 1_000_000_000}))
            key = issue_api_key(conn, account_id)
        script = tmp / f"post_job_{phase}.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = '{BODY}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        )
        return script

    results = []
    jaeger = JaegerServer(tmp / "jaeger", free_port(), free_port(), free_port(), free_port()) if args.tracing else None
    try:
        if jaeger:
            jaeger.start()
            traced_env = jaeger.otel_env()
            if args.sample_ratio is not None:
                traced_env |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                               "OTEL_TRACES_SAMPLER_ARG": str(args.sample_ratio)}
        with checkouts(args.baseline) as sources:
            # Rounds alternate their order (off, on, on, off, …) so that a drift of this machine or of
            # the growing tables does not fall on one side.
            runs = [(f"{label}, tracing {'on' if traced else 'off'}" if jaeger else label, source, traced,
                     traced_env if traced else {"OTEL_SDK_DISABLED": "true"})
                    for round_ in range(args.rounds) for label, source in sources
                    for traced in (((False, True) if round_ % 2 == 0 else (True, False)) if jaeger else (False,))]
            for phase, (label, source, traced, env) in enumerate(runs):
                script = submission_script(phase)
                with served_api(workers=args.workers, source=source, env=env) as base:
                    run_wrk(f"{base}/healthz", None, 3, args.connections)  # warm-up
                    health = run_wrk(f"{base}/healthz", None, args.seconds, args.connections)
                    with engine.connect() as conn:
                        before = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
                    cpu_before = api_cpu_s(base)
                    submit = run_wrk(f"{base}/jobs", script, args.seconds, args.connections)
                    submit["api_cpu_ms"] = 1000 * (api_cpu_s(base) - cpu_before) / max(submit["requests"], 1)
                    with engine.connect() as conn:
                        created = conn.execute(select(func.count()).select_from(jobs)).scalar_one() - before
                results.append((label, traced, health, submit, created))
    finally:
        if jaeger:
            jaeger.stop()
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"uvicorn workers {args.workers}, wrk 2 threads × {args.connections} connections, {args.seconds} s each, "
          f"{os.cpu_count()} cores shared by everything")
    for label, _, health, submit, created in results:
        print(label)
        for name, figures in (("GET /healthz (ceiling)", health), ("POST /jobs", submit)):
            print(f"  {name:<24} {figures['rps']:8.0f} req/s   p50 {figures['p50_ms']:6.1f} ms   "
                  f"p90 {figures['p90_ms']:6.1f} ms   p99 {figures['p99_ms']:6.1f} ms   non-2xx {figures['non_2xx']:.0f}")
        print(f"  jobs written {created} for {submit['requests']:.0f} completed requests (wrk counts only those "
              "answered within its 5 s timeout)")
        print(f"  API CPU per submission {submit['api_cpu_ms']:.2f} ms (its worker processes, user + system)")
        print(f"  POST /jobs ÷ ceiling  {submit['rps'] / health['rps']:.2f}   (goal: ≥ 2000 req/s with p99 ≤ 50 ms)")
    if jaeger:
        ratios, cpu_ratios = [], []
        pairs = [sorted(results[i:i + 2], key=lambda result: result[1]) for i in range(0, len(results), 2)]
        for (_, _, _, off, _), (_, _, _, on, _) in pairs:
            ratios.append(on["rps"] / off["rps"])
            cpu_ratios.append(on["api_cpu_ms"] / off["api_cpu_ms"])
            print(f"tracing on ÷ off, POST /jobs req/s: {ratios[-1]:.3f}   p99 {off['p99_ms']:.1f} → "
                  f"{on['p99_ms']:.1f} ms   API CPU per submission {off['api_cpu_ms']:.2f} → {on['api_cpu_ms']:.2f} ms "
                  f"(× {cpu_ratios[-1]:.3f})")
        print(f"median of {len(ratios)}: req/s {statistics.median(ratios):.3f}, API CPU per submission × "
              f"{statistics.median(cpu_ratios):.3f}   (goal: lose ≤ 3 %; sampler: "
              f"{traced_env.get('OTEL_TRACES_SAMPLER', 'parentbased_always_on')} "
              f"{traced_env.get('OTEL_TRACES_SAMPLER_ARG', '')})")

if __name__ == "__main__":
    main()

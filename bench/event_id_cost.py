"""What ordering event ids costs a writer: inserts into a table whose id comes from
`next_event_id()` (two shared advisory locks and a `set_config`: migration 0015) side by side with
the same table with an identity column (what `events` had before), in alternating rounds.

    .local/venv/bin/constellation-dev with-services -- .local/venv/bin/python bench/event_id_cost.py \
        [--threads 8] [--seconds 8] [--rounds 2]

Each of `--threads` connections inserts one row per transaction for `--seconds`, as a lone statement
(autocommit, as a submission's) and inside a transaction of two statements (as a batch's commit);
prints rows/s and the machine time per row. Runs on throwaway Postgres (`with-services`); the two
tables are scratch tables of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import psycopg

TABLES = {
    "identity (before)":
        "bench_ev_identity (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, type text, payload jsonb)",
    "next_event_id()": "bench_ev_ordered (id bigint PRIMARY KEY DEFAULT next_event_id(), type text, payload jsonb)",
}


def rows_per_s(url: str, table: str, *, threads: int, seconds: float, in_transaction: bool) -> float:
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def work(k: int) -> None:
        with psycopg.connect(url, autocommit=not in_transaction) as conn:
            while time.monotonic() < stop:
                if in_transaction:
                    with conn.transaction():
                        conn.execute("SELECT 1")
                        conn.execute(f"INSERT INTO {table} (type, payload) VALUES ('job.progress', '{{}}')")
                else:
                    conn.execute(f"INSERT INTO {table} (type, payload) VALUES ('job.progress', '{{}}')")
                counts[k] += 1

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url or not os.environ.get("CONSTELLATION_TEST_PG_ADMIN_URL"):
        raise SystemExit("run under `constellation-dev with-services -- ...` (throwaway Postgres and NATS)")
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    names = {label: ddl.split()[0] for label, ddl in TABLES.items()}
    with psycopg.connect(url, autocommit=True) as conn:
        for ddl in TABLES.values():
            conn.execute(f"DROP TABLE IF EXISTS {ddl.split()[0]}")
            conn.execute(f"CREATE TABLE {ddl}")
    try:
        print(f"{args.threads} connections, {args.seconds:.0f} s a phase, {os.cpu_count()} cores shared with Postgres")
        for round_ in range(args.rounds):
            order = list(TABLES) if round_ % 2 == 0 else list(reversed(TABLES))
            for in_transaction in (False, True):
                for label in order:
                    rate = rows_per_s(url, names[label], threads=args.threads, seconds=args.seconds,
                                      in_transaction=in_transaction)
                    print(f"round {round_ + 1}  {'2-statement transaction' if in_transaction else 'lone INSERT':<23} "
                          f"{label:<18} {rate:8.0f} rows/s  {1e6 * os.cpu_count() / rate:6.1f} µs of the machine a row")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f"DROP TABLE IF EXISTS {name}")


if __name__ == "__main__":
    main()

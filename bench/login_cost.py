"""What one Postgres login costs: the CPU of the client (libpq's SCRAM: PBKDF2 of the password) and of
PgBouncer, per connection, for Dagster's role — straight to Postgres and through the demo's PgBouncer.
Every run worker opens its own connections (~5–6 logins per job in a P9 backlog).

With `make demo` running: `.local/venv/bin/python bench/login_cost.py [--logins 200]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import psycopg2
from sqlalchemy.engine import make_url

from constellation_core.settings import get_settings
from constellation_devstack.postgres import PROGRAM_ROLES, PostgresCluster


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logins", type=int, default=200)
    args = parser.parse_args()
    settings = get_settings()
    role = PROGRAM_ROLES["dagster-daemon"]
    password = PostgresCluster(settings.local_dir / "postgres",
                               make_url(settings.database_url).port or 5432).passwords()[role]
    bouncer = int(subprocess.run(["pgrep", "-x", "pgbouncer"], capture_output=True, text=True, check=True)
                  .stdout.split()[0])
    direct_port = make_url(settings.database_url).port or 5432
    for name, port in (("Postgres", direct_port), ("PgBouncer", settings.pgbouncer_port)):
        cpu, bouncer_cpu, wall = time.process_time(), process_cpu_s(bouncer), time.perf_counter()
        for _ in range(args.logins):
            psycopg2.connect(host="127.0.0.1", port=port, user=role, password=password, dbname="dagster").close()
        n = args.logins
        print(f"{name:10s} (:{port})  per login: wall {(time.perf_counter() - wall) / n * 1000:5.2f} ms, "
              f"client CPU {(time.process_time() - cpu) / n * 1000:5.2f} ms, "
              f"PgBouncer CPU {(process_cpu_s(bouncer) - bouncer_cpu) / n * 1000:5.2f} ms")


if __name__ == "__main__":
    main()

"""PgBouncer (Debian's `pgbouncer`) in front of the local Postgres, for Dagster's connections.

dagster-postgres opens a new connection for every storage call (SQLAlchemy NullPool, by design: an
instance must not hold connections), and Dagster's code server makes a fresh instance for every sensor
tick: with nothing queued that was ~45 new Postgres backends a second, half a core spent forking and
warming them. In session mode PgBouncer hands each of those short connections an already-warm
server connection; Dagster sees plain Postgres (LISTEN/NOTIFY and DDL work as before). The run
workers' own connections to the system of record go through it as well: each run worker opens its
own, and a P9 backlog forked ~3.6 Postgres backends per job without it.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

PGBOUNCER = "/usr/sbin/pgbouncer"
# The program whose run workers (forked per Dagster run) reach the system of record through PgBouncer too.
RUN_WORKERS_PROGRAM = "dagster-daemon"
SERVER_LOGIN_RETRY_S = 1


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (PGBOUNCER if Path(PGBOUNCER).exists() else None)
    if not found:
        raise RuntimeError("pgbouncer not found: run `make install` (as root it installs Debian's pgbouncer)")
    return found


@dataclass
class PgBouncer:
    """One pooler for one upstream server. `root` holds its config and user list."""

    root: Path
    port: int
    upstream_url: str  # any URL of the server (its host and port are taken from it)
    # The roles that may log in through it, each with its SCRAM secret as the server stores it
    # (`credentials.scram_verifier`: PgBouncer checks each client's proof against it and logs in upstream
    # with that proof) or, for a role whose server-side secret is not ours to set, its password (PgBouncer
    # then derives the keys at every login, ~3 ms of its CPU, and logs in upstream with the password).
    logins: dict[str, str]

    @property
    def ini(self) -> Path:
        return self.root / "pgbouncer.ini"

    def pooled_url(self, url: str) -> str:
        """`url` (a database on the upstream server) through this pooler."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def write_config(self) -> None:
        upstream = make_url(self.upstream_url)
        self.root.mkdir(parents=True, exist_ok=True)
        userlist = self.root / "userlist.txt"
        fd = os.open(userlist, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f'"{role}" "{password}"\n' for role, password in self.logins.items())
        self.ini.write_text(
            "[databases]\n"
            # Every database of the upstream server, under its own name.
            f"* = host={upstream.host or '127.0.0.1'} port={upstream.port or 5432}\n\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            # Every client proves its password, as on the server itself (postgres.py).
            "auth_type = scram-sha-256\n"
            f"auth_file = {userlist}\n"
            # A client keeps its server connection until it disconnects: Dagster's sessions, LISTEN
            # included, behave exactly as on a direct connection.
            "pool_mode = session\n"
            # Each Dagster process keeps a few pooled connections (constellation_dagster/storage.py),
            # each of up to 8 run workers its own: room for all of them with Postgres's 200.
            "default_pool_size = 100\n"
            "max_client_conn = 400\n"
            "server_idle_timeout = 120\n"
            # After Postgres restarts, PgBouncer logs in again this soon (default 15 s: every Dagster
            # process was refused "server login has been failing" for 15 s after each restart).
            f"server_login_retry = {SERVER_LOGIN_RETRY_S}\n"
            # Dagit passes `options=-c statement_timeout=…`; PgBouncer 1.18 cannot forward it.
            "ignore_startup_parameters = extra_float_digits,options\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            for path in (self.root, self.ini, userlist):
                os.chown(path, pg.pw_uid, pg.pw_gid)

    def argv(self) -> list[str]:
        """The foreground command (PgBouncer refuses to run as root: as root it runs as `postgres`)."""
        argv = [pgbouncer_binary(), str(self.ini)]
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

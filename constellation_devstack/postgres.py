"""A PostgreSQL cluster in a folder of ours, run as the `postgres` user when we are root.

Nobody connects without a password (scram-sha-256, TCP on 127.0.0.1 and the socket alike): the
superuser's and each service role's are made once (`<root>/credentials.json`, 0600) and handed to each
process in its own URL. The services get least-privilege roles (`SERVICE_ROLES`; their rights are
granted by the migrations and by `init_dagster_storage`): the superuser is for set-up, tests and benches.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from constellation_core.waiting import wait_for
from constellation_devstack import credentials

PG_ROOT = Path("/usr/lib/postgresql")
POSTGIS_CONTROL = "postgis.control"
SUPERUSER = "postgres"
# The login role of each service (migration 0011 and `init_dagster_storage` grant their rights).
SERVICE_ROLES = ("constellation_api", "constellation_dagster", "constellation_usage")
# Which role each program of the stack logs in as (supervisord's names); `setup` migrates, as superuser.
PROGRAM_ROLES = {"api": "constellation_api", "usage": "constellation_usage", "setup": SUPERUSER,
                 **{program: "constellation_dagster" for program in (
                     "code-server", "dagster-daemon", "dagster-webserver", "dispatcher", "device-workers",
                     "gpu-agent")}}
PG_CREDENTIALS_ENV = "CONSTELLATION_PG_CREDENTIALS"  # set by `with-services`: the passwords file
# Only password logins, from anyone, over TCP (127.0.0.1: listen_addresses) and the socket.
HBA = (
    "# Written by constellation-dev (postgres.py): every login needs its password.\n"
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
)


def with_login(url: str, role: str, password: str) -> str:
    """`url` logging in as `role` with `password`."""
    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


def ensure_login_roles(admin_url: str, passwords: dict[str, str]) -> None:
    """Each role of `passwords` exists and logs in with its password (the superuser's is left alone),
    stored as `credentials.scram_verifier` makes it: the secret PgBouncer holds for the role."""
    libpq = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        for role, password in passwords.items():
            if role == SUPERUSER:
                continue
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            secret = credentials.scram_verifier(password)
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(secret)))


def find_pg_bindir() -> Path:
    """The newest installed PostgreSQL whose share dir has PostGIS."""
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override)
    versions = sorted(
        (p for p in PG_ROOT.glob("*") if (p / "bin" / "postgres").exists()),
        key=lambda p: int(p.name) if p.name.isdigit() else 0,
        reverse=True,
    )
    for version_dir in versions:
        if (Path("/usr/share/postgresql") / version_dir.name / "extension" / POSTGIS_CONTROL).exists():
            return version_dir / "bin"
    raise RuntimeError(
        "No PostgreSQL with PostGIS found under /usr/lib/postgresql. "
        "Run `make install` (as root it installs postgresql-15 and postgresql-15-postgis-3), "
        "or set DATABASE_URL to an existing server with PostGIS."
    )


def _running_as_root() -> bool:
    return os.geteuid() == 0


@dataclass
class PostgresCluster:
    """One server. `root` holds `data/`, `socket/` and `postgres.log`."""

    root: Path
    port: int
    tuned_for_tests: bool = False
    # With `tuned_for_tests`, still write each commit's WAL to the OS before acknowledging it, so that a
    # killed server (not a crashed machine) loses no commit it acknowledged: what a chaos test needs.
    commits_survive_kill: bool = False
    bindir: Path = field(default_factory=find_pg_bindir)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    def passwords(self) -> dict[str, str]:
        """The superuser's and each service role's password, made on first use."""
        return credentials.passwords(self.credentials_file, (SUPERUSER, *SERVICE_ROLES))

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg", role: str = SUPERUSER) -> str:
        """A URL that logs in as `role` (the superuser unless told): it carries the password, never log it."""
        return f"{driver}://{role}:{self.passwords()[role]}@127.0.0.1:{self.port}/{database}"

    def public_url(self, database: str = "postgres") -> str:
        """The server's address, without credentials (for logs)."""
        return f"postgresql://127.0.0.1:{self.port}/{database}"

    def ensure_service_roles(self) -> None:
        ensure_login_roles(self.url(), self.passwords())

    def _owned(self, argv: list[str]) -> list[str]:
        # Postgres refuses to run as root: drop to the `postgres` user created by the Debian package.
        return ["runuser", "-u", "postgres", "--", *argv] if _running_as_root() else argv

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if _running_as_root():
            pg = pwd.getpwnam("postgres")
            # The postgres user must be able to reach the folder; it owns what is inside.
            os.chmod(self.root, 0o755)
            for path in (self.root, self.socket_dir):
                os.chown(path, pg.pw_uid, pg.pw_gid)
            if self.data_dir.exists():
                shutil.chown(self.data_dir, "postgres", "postgres")

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster (superuser password set, password logins only) if it does not exist yet;
        an older one of ours that trusted every local connection gets a password and the rules now."""
        self._prepare_dirs()
        password = self.passwords()[SUPERUSER]
        if self.initialized:
            if self._hba.read_text() != HBA:
                self._set_superuser_password(password)
                self._write_hba()
            return
        with self._readable_by_server(password + "\n") as pwfile:
            subprocess.run(
                self._owned(
                    [
                        str(self.bindir / "initdb"),
                        "-D", str(self.data_dir),
                        "-U", SUPERUSER,
                        f"--pwfile={pwfile}",
                        "--auth=scram-sha-256",
                        "--encoding=UTF8",
                        "--no-locale",
                    ]
                ),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        self._write_hba()

    @property
    def _hba(self) -> Path:
        return self.data_dir / "pg_hba.conf"

    def _write_hba(self) -> None:
        self._hba.write_text(HBA)
        if _running_as_root():
            shutil.chown(self._hba, "postgres", "postgres")

    def _set_superuser_password(self, password: str) -> None:
        # The server is down (init runs before it starts): single-user mode sets it, no login needed.
        statement = f"ALTER ROLE {SUPERUSER} PASSWORD '{password}';\n"  # token_urlsafe: no quote inside
        subprocess.run(
            self._owned([str(self.bindir / "postgres"), "--single", "-D", str(self.data_dir), SUPERUSER]),
            input=statement.encode(), check=True, stdout=subprocess.DEVNULL,
        )

    @contextlib.contextmanager
    def _readable_by_server(self, text: str) -> Iterator[str]:
        """A file holding `text` that only the server's OS user can read, removed afterwards."""
        fd, path = tempfile.mkstemp(dir=self.root, prefix=".pw-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            if _running_as_root():
                shutil.chown(path, "postgres", "postgres")
            yield path
        finally:
            os.unlink(path)

    def server_options(self) -> list[str]:
        options = [
            "-p", str(self.port),
            "-k", str(self.socket_dir),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=200",
        ]
        if self.tuned_for_tests:
            # A throwaway cluster: durability buys nothing, speed does.
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
            if not self.commits_survive_kill:
                options += ["-c", "synchronous_commit=off"]
        return options

    def foreground_argv(self) -> list[str]:
        """The command a supervisor runs to keep the server in the foreground."""
        return self._owned([str(self.bindir / "postgres"), "-D", str(self.data_dir), *self.server_options()])

    def start(self, timeout: float = 60) -> None:
        """Start in the background (pg_ctl) and wait until it accepts connections."""
        self.init()
        subprocess.run(
            self._owned(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D", str(self.data_dir),
                    "-l", str(self.log_file),
                    "-o", " ".join(self.server_options()),
                    "-w", "-t", str(int(timeout)),
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(self.accepts_connections, timeout=timeout, what=f"Postgres on port {self.port}", interval=0.1)

    def accepts_connections(self) -> bool:
        with psycopg.connect(self.url().replace("postgresql+psycopg", "postgresql"), connect_timeout=2):
            return True

    def stop(self) -> None:
        if not self.initialized:
            return
        subprocess.run(
            self._owned([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

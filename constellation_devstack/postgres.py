"""A PostgreSQL cluster in a folder of ours, run as the `postgres` user when we are root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from constellation_core.waiting import wait_for

PG_ROOT = Path("/usr/lib/postgresql")
POSTGIS_CONTROL = "postgis.control"


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

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

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
        self._prepare_dirs()
        if self.initialized:
            return
        subprocess.run(
            self._owned(
                [
                    str(self.bindir / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def server_options(self) -> list[str]:
        options = [
            "-p", str(self.port),
            "-k", str(self.socket_dir),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=200",
        ]
        if self.tuned_for_tests:
            # A throwaway cluster: durability buys nothing, speed does.
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
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

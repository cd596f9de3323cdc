"""Debian's Prometheus for the stack: it scrapes every process that exports metrics, on loopback.

`make demo` runs it under the supervisor (its data in `.local/prometheus/`, kept 15 days); the e2e
tests run their own. The API's `/metrics` wants a bearer token: one is made once per stack
(`credentials.json`, 0600) and handed to the API as `CONSTELLATION_METRICS_TOKEN` and to Prometheus as
a token file. `infra/prometheus/prometheus.yml` is the same scrape list for the compose file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from constellation_core.waiting import port_open, terminate, wait_for
from constellation_devstack import credentials

BINARY = "/usr/bin/prometheus"
RETENTION = "15d"
SCRAPE_INTERVAL_S = 5
TOKEN_USER = "scraper"


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (BINARY if Path(BINARY).exists() else None)
    if not found:
        raise RuntimeError("prometheus is missing: `make install` installs Debian's package "
                           "(apt-get install --no-install-recommends prometheus)")
    return found


@dataclass
class Target:
    """One scrape job: `name`, its `host:port` addresses, and whether it wants the bearer token."""

    name: str
    addresses: list[str]
    token: bool = False
    path: str = "/metrics"


@dataclass
class PrometheusServer:
    root: Path  # holds data/, prometheus.yml, the token file and the log
    port: int
    targets: list[Target]
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        """The scraper's bearer token for the API's `/metrics` (made on first use)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        return credentials.passwords(self.root / "credentials.json", [TOKEN_USER])[TOKEN_USER]

    def config(self) -> str:
        token_file = self.root / "scrape-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.token())
        jobs = [f"  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{self.port}']\n"]
        for target in self.targets:
            addresses = ", ".join(f"'{a}'" for a in target.addresses)
            auth = f"    authorization:\n      credentials_file: {token_file}\n" if target.token else ""
            jobs.append(f"  - job_name: {target.name}\n    metrics_path: {target.path}\n{auth}"
                        f"    static_configs:\n      - targets: [{addresses}]\n")
        return (f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
                "scrape_configs:\n" + "".join(jobs))

    def argv(self) -> list[str]:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        config.write_text(self.config())
        return [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={self.root / 'data'}",
                f"--storage.tsdb.retention.time={RETENTION}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle"]

    def start(self, timeout: float = 30) -> None:
        log = open(self.root / "prometheus.log", "ab")  # noqa: SIM115 - lives as long as the server
        self._process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open("127.0.0.1", self.port) and self.ready(), timeout=timeout,
                 what=f"Prometheus on port {self.port} (log: {self.root / 'prometheus.log'})")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        terminate(self._process)

"""Jaeger, the stack's trace store: every process sends its spans to it over OTLP/HTTP, and the API
reads a job's trace back from its query API (`GET /jobs/{id}/trace`).

The program is Jaeger v2 built from the Go module (`make jaeger`: `tools/jaeger`, pinned in its
go.mod), run with `infra/jaeger/jaeger.yaml`: OTLP/HTTP in, traces in memory, the query API, a health
check, all on 127.0.0.1. `make demo` runs it under the supervisor; the e2e tests run their own.
Processes find it through the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (`otel_env`).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from constellation_core.settings import REPO_ROOT
from constellation_core.waiting import port_open, terminate, wait_for

BINARY = REPO_ROOT / "tools" / "jaeger" / "bin" / "jaeger"
CONFIG = REPO_ROOT / "infra" / "jaeger" / "jaeger.yaml"


def jaeger_binary() -> Path:
    if not BINARY.exists():
        raise RuntimeError(f"{BINARY} is missing: `make install` builds it (cd tools/jaeger && "
                           "go build -o bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger)")
    return BINARY


@dataclass
class JaegerServer:
    root: Path  # holds the log
    otlp_port: int
    query_port: int
    query_grpc_port: int
    health_port: int
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def otlp_url(self) -> str:
        return f"http://127.0.0.1:{self.otlp_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def argv(self) -> list[str]:
        return [str(jaeger_binary()), f"--config={CONFIG}"]

    def env(self) -> dict[str, str]:
        """The variables `infra/jaeger/jaeger.yaml` reads its ports from."""
        return {"JAEGER_OTLP_HTTP_PORT": str(self.otlp_port), "JAEGER_QUERY_PORT": str(self.query_port),
                "JAEGER_QUERY_GRPC_PORT": str(self.query_grpc_port), "JAEGER_HEALTH_PORT": str(self.health_port)}

    def otel_env(self) -> dict[str, str]:
        """What the stack's processes need to send their spans here (the standard variables)."""
        return otel_env(self.otlp_url)

    def start(self, timeout: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "jaeger.log", "ab")  # noqa: SIM115 - lives as long as the server
        self._process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env()})
        wait_for(lambda: self._process.poll() is None and port_open("127.0.0.1", self.otlp_port) and self.ready(),
                 timeout=timeout, what=f"Jaeger on port {self.otlp_port} (log: {self.root / 'jaeger.log'})")

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/status", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        terminate(self._process)


def otel_env(otlp_url: str) -> dict[str, str]:
    """Send spans over OTLP/HTTP to `otlp_url`, unless the environment already names an endpoint
    (an operator's collector) or turns the SDK off."""
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return {}
    # Spans leave each process within a second of their end (the SDK's default waits five), so a job's
    # page shows its trace as it happens.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "1000")}

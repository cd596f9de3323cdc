"""Process settings, read from the environment (and `.env` if present)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent

# How uvicorn serves the API wherever it is started (make demo/dev, the tests, the benches; the compose
# file spells the same flags): the app's factory, and WebSocket frames not compressed — deflating each
# ~300-byte event once per client took a sixth of the API's CPU with 50 stream clients at 500 events/s
# and dropped them as too slow (bench/p2_stream_latency.py); Socket.IO turned it off by default likewise.
API_SERVER_ARGS = ("--factory", "api.main:app", "--ws-per-message-deflate", "false")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # System of record. Any SQLAlchemy URL; the driver is normalised per use (see below).
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:55432/constellation"
    # Dagster's run/event/schedule storage. Defaults to a `dagster` database on the same server.
    dagster_database_url: str | None = None
    nats_url: str = "nats://127.0.0.1:14222"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    dagit_port: int = 3000
    # The Dagster code server of the code location (workspace.yaml names it through these variables).
    dagster_code_server_host: str = "127.0.0.1"
    dagster_code_server_port: int = 4266
    usage_port: int = 8081
    # `make dev`: the Next.js dev server (live reload), which proxies everything else to the API.
    web_dev_port: int = 3100
    # Prometheus (started by `make demo`) and the exporters it scrapes besides the API's /metrics.
    prometheus_port: int = 9090
    # Where the API reads metric history (Prometheus's query API); default: the demo's Prometheus.
    prometheus_url: str | None = None
    gpu_agent_metrics_port: int = 9400  # dcgm-exporter's port
    # Where the GPU agent and the dispatcher serve their metrics: loopback, but in a container
    # (infra/docker-compose.yml) every interface, for Prometheus in its own container.
    metrics_host: str = "127.0.0.1"
    dispatcher_metrics_port: int = 9401
    # Jaeger (started by `make demo`): OTLP/HTTP in, its query API read by GET /jobs/{id}/trace.
    jaeger_otlp_port: int = 4318
    jaeger_query_port: int = 16686
    jaeger_query_grpc_port: int = 16685
    jaeger_health_port: int = 13133
    # Where the API reads traces (Jaeger's query API); default: the demo's Jaeger on this machine.
    jaeger_query_url: str | None = None
    # PgBouncer in front of the demo's own Postgres, for Dagster's many short connections.
    pgbouncer_port: int = 55433
    # Public base URL of Dagit, used for links from jobs to their runs.
    dagit_url: str | None = None
    # Where the API finds the Go usage service it serves under /usage (same origin for clients).
    usage_url: str | None = None

    local_dir: Path = Field(default=REPO_ROOT / ".local", alias="CONSTELLATION_LOCAL_DIR")
    max_tiles_per_job: int = Field(default=5000, alias="CONSTELLATION_MAX_TILES_PER_JOB")
    # A claimed job that is still not running is looked at again after this long (its Dagster run is
    # checked first: a run that merely waits in Dagster's queue is never launched twice).
    redispatch_after_s: float = Field(default=60.0, gt=0, alias="CONSTELLATION_REDISPATCH_AFTER_S")
    log_level: str = "INFO"
    # The bearer token a Prometheus scraper presents for GET /metrics (admins' keys work too).
    metrics_token: str | None = Field(default=None, alias="CONSTELLATION_METRICS_TOKEN")

    @model_validator(mode="after")
    def _local_superuser_password(self) -> Settings:
        """With no DATABASE_URL given, the default names the demo's own server (`make demo`), which
        wants a password: its superuser's, from the 0600 file the stack keeps it in (for the operator's
        tools and benches on this machine; the stack's processes get their own roles' URLs)."""
        saved = self.local_dir / "postgres" / "credentials.json"  # constellation_devstack/postgres.py
        if "database_url" not in self.model_fields_set and saved.exists():
            password = json.loads(saved.read_text()).get("postgres")
            self.database_url = make_url(self.database_url).set(password=password).render_as_string(
                hide_password=False)
        return self

    @property
    def sync_database_url(self) -> str:
        """The system-of-record URL with the psycopg (v3) driver."""
        return make_url(self.database_url).set(drivername="postgresql+psycopg").render_as_string(
            hide_password=False
        )

    @property
    def dagster_storage_url(self) -> str:
        """Dagster storage URL. dagster-postgres needs psycopg2 under SQLAlchemy 2.1."""
        if self.dagster_database_url:
            url = make_url(self.dagster_database_url)
        else:
            url = make_url(self.database_url).set(database="dagster")
        return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)

    @property
    def usage_base_url(self) -> str:
        return self.usage_url or f"http://127.0.0.1:{self.usage_port}"

    @property
    def dagit_base_url(self) -> str:
        return self.dagit_url or f"http://127.0.0.1:{self.dagit_port}"

    @property
    def prometheus_base_url(self) -> str:
        return self.prometheus_url or f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def jaeger_query_base_url(self) -> str:
        return self.jaeger_query_url or f"http://127.0.0.1:{self.jaeger_query_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()

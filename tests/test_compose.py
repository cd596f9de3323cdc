"""infra/docker-compose.yml runs what `make demo` runs: the same processes, each with the same NATS user
and Postgres role, and its Prometheus scrapes the same jobs (parsed from both; no Docker needed)."""

from __future__ import annotations

import re

import yaml
from sqlalchemy.engine import make_url

from constellation_core.settings import REPO_ROOT, Settings
from constellation_devstack.commands import _local_prometheus, supervisor_config
from constellation_devstack.nats import PROGRAM_USERS
from constellation_devstack.postgres import PROGRAM_ROLES

INFRA = REPO_ROOT / "infra"
# Where the two differ on purpose, and why.
DEMO_ONLY = {"pgbouncer": "compose's Dagster processes connect to Postgres directly (no pooler in front)"}
COMPOSE_ONLY = {"grafana": "the dashboards' Grafana (its server does not install on the development machine)"}


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())["services"]


def _demo_programs(tmp_path) -> list[str]:
    settings = Settings(CONSTELLATION_LOCAL_DIR=tmp_path, CONSTELLATION_METRICS_TOKEN="unused")
    config = supervisor_config(settings, local_postgres=False, local_nats=False)
    # postgres and nats run in `make demo` only when no external one is given; compose always runs them
    return [*re.findall(r"^\[program:([\w-]+)\]$", config, re.M), "postgres", "pgbouncer", "nats"]


def test_compose_runs_the_processes_make_demo_runs(tmp_path):
    demo = set(_demo_programs(tmp_path))
    compose = set(_compose())
    assert {"dispatcher", "gpu-agent", "device-workers", "api", "jaeger", "prometheus"} <= demo
    assert demo - compose == set(DEMO_ONLY), f"in `make demo` only: {sorted(demo - compose - set(DEMO_ONLY))}"
    assert compose - demo == set(COMPOSE_ONLY), f"in compose only: {sorted(compose - demo - set(COMPOSE_ONLY))}"


def test_each_compose_service_logs_in_as_its_demo_user_and_role():
    for name, service in _compose().items():
        environment = service.get("environment") or {}
        if name in PROGRAM_USERS:
            nats = environment.get("NATS_URL")
            assert nats and make_url(nats.replace("nats://", "nats+x://")).username == PROGRAM_USERS[name], name
        if name in PROGRAM_ROLES and name != "setup":
            database = environment.get("DATABASE_URL")
            assert database and make_url(database).username == PROGRAM_ROLES[name], name


def test_compose_prometheus_scrapes_what_the_demo_prometheus_scrapes(tmp_path):
    demo = {target.name for target in _local_prometheus(Settings(CONSTELLATION_LOCAL_DIR=tmp_path)).targets}
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == demo

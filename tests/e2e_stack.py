"""The whole stack on real processes for end-to-end tests: API, usage service, device workers (Ray),
Dagster daemon and webserver, dispatcher and GPU agent, on the session's Postgres and NATS."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from constellation_core.devices import SIMULATED_ENV
from constellation_core.settings import API_SERVER_ARGS, REPO_ROOT, get_settings
from constellation_core.waiting import free_port, port_open, wait_for
from constellation_dagster.bootstrap import ensure_model
from constellation_dagster.models.assets import ModelTrainingConfig
from constellation_devstack.commands import code_server_serving
from constellation_devstack.credentials import scram_verifier
from constellation_devstack.jaeger import JaegerServer
from constellation_devstack.nats import NATS_CREDENTIALS_ENV, PROGRAM_USERS, url_for
from constellation_devstack.pgbouncer import RUN_WORKERS_PROGRAM, PgBouncer
from constellation_devstack.postgres import PROGRAM_ROLES
from constellation_devstack.prometheus import PrometheusServer, Target
from constellation_devstack.setup import init_dagster_storage, prepare_dagster_home
from tests.conftest import fresh_database_url, role_password, role_url
from tests.processes import BIN, ManagedProcess


def serving_devices(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT uuid FROM gpus WHERE gone_at IS NULL ORDER BY uuid")).scalars().all()
    finally:
        engine.dispose()


def as_service(env: dict[str, str], program: str) -> dict[str, str]:
    """`env` with the program's own NATS user and Postgres role, as `make demo` runs it (`with-services`
    tells us their passwords; the tests themselves connect as admin and superuser)."""
    env = dict(env)
    credentials, user = os.environ.get(NATS_CREDENTIALS_ENV), PROGRAM_USERS.get(program)
    if credentials and user:
        env["NATS_URL"] = url_for(env["NATS_URL"], user, json.loads(Path(credentials).read_text())[user])
    if role := PROGRAM_ROLES.get(program):
        env["DATABASE_URL"] = role_url(env["DATABASE_URL"], role)
        env["DAGSTER_PG_URL"] = role_url(env["DAGSTER_PG_URL"], role)
    return env


def pooled_system_of_record(env: dict[str, str], pooler: PgBouncer) -> dict[str, str]:
    """The run workers' connections through PgBouncer, as `make demo` runs them."""
    return {**env, "DATABASE_URL": pooler.pooled_url(env["DATABASE_URL"])}


@contextmanager
def running_stack(pg_admin_url: str, nats_url: str, migrated_template: str, *, simulated: int,
                  env: dict[str, str] | None = None, serving: int | None = None) -> Iterator[dict]:
    """Start the stack (own databases, Dagster home, ports); yield its addresses and processes.

    The device workers start first; the code server once `serving` devices (default: `simulated`) have
    registered, since on a cluster (`RAY_ADDRESS`) the code location builds its pools from them; the
    daemon and Dagit once the code server answers."""
    tmp = Path(tempfile.mkdtemp(prefix="constellation-e2e-"))
    # Its own system-of-record database, so the daemon only sees this stack's jobs.
    database_url = fresh_database_url(pg_admin_url, "constellation_e2e", migrated_template)
    dagster_url = fresh_database_url(pg_admin_url, "dagster_test").replace("+psycopg", "+psycopg2")
    tmp.chmod(0o711)  # PgBouncer runs as `postgres` (when we are root) and must reach its folder inside
    home = prepare_dagster_home(tmp / "dagster_home")
    # Dagster's processes reach their storage through PgBouncer, as in `make demo`.
    admin = make_url(pg_admin_url)
    dagster_role = PROGRAM_ROLES["dagster-daemon"]
    pooler = PgBouncer(tmp / "pgbouncer", free_port(), pg_admin_url,
                       {admin.username: admin.password, dagster_role: scram_verifier(role_password(dagster_role) or "")})
    pooler.write_config()
    local_dir = tmp / "local"
    patch = pytest.MonkeyPatch()
    # Simulated devices, scheduled like GPUs (own pools, own workers), computing on the CPU.
    patch.setenv(SIMULATED_ENV, str(simulated))
    patch.setenv("CONSTELLATION_LOCAL_DIR", str(local_dir))
    get_settings.cache_clear()
    init_dagster_storage(home, dagster_url, train_model=False)
    with DagsterInstance.from_config(str(home)) as instance:
        ensure_model(instance, ModelTrainingConfig(epochs=3, train_patches=2000))
    api_port, dagit_port, usage_port, code_port = free_port(), free_port(), free_port(), free_port()
    agent_metrics_port, dispatcher_metrics_port = free_port(), free_port()
    # Prometheus scrapes the API (with the metrics token) and the GPU agent's exporter, as in `make demo`.
    prometheus = PrometheusServer(tmp / "prometheus", free_port(), [
        Target("api", [f"127.0.0.1:{api_port}"], token=True),
        Target("gpu-agent", [f"127.0.0.1:{agent_metrics_port}"]),
        Target("usage", [f"127.0.0.1:{usage_port}"]),
        Target("dispatcher", [f"127.0.0.1:{dispatcher_metrics_port}"]),
    ])
    # Jaeger keeps every process's spans, as in `make demo`; the API reads a job's trace from it.
    jaeger = JaegerServer(tmp / "jaeger", free_port(), free_port(), free_port(), free_port())
    env = {
        **os.environ,
        **jaeger.otel_env(),
        "JAEGER_QUERY_URL": jaeger.query_url,
        "PROMETHEUS_URL": prometheus.url,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "DAGSTER_PG_URL": pooler.pooled_url(dagster_url),
        "DAGSTER_HOME": str(home),
        "DAGIT_PORT": str(dagit_port),
        "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
        "DAGSTER_CODE_SERVER_PORT": str(code_port),
        "USAGE_PORT": str(usage_port),
        "GPU_AGENT_METRICS_PORT": str(agent_metrics_port),
        "DISPATCHER_METRICS_PORT": str(dispatcher_metrics_port),
        "CONSTELLATION_METRICS_TOKEN": prometheus.token(),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    first = [
        ManagedProcess("pgbouncer", pooler.argv(), env, tmp),
        ManagedProcess("usage", [str(REPO_ROOT / "usage_go" / "bin" / "usage")], as_service(env, "usage"), tmp),
        ManagedProcess("api", [str(BIN / "uvicorn"), *API_SERVER_ARGS, "--port", str(api_port)],
                       as_service(env, "api"), tmp),
        ManagedProcess("device-workers", [str(BIN / "constellation-dev"), "device-workers"],
                       as_service(env, "device-workers"), tmp),
    ]
    code_server = ManagedProcess(
        "code-server",
        [str(BIN / "dagster"), "api", "grpc", "-m", "constellation_dagster.definitions",
         "--location-name", "constellation_dagster", "-h", "127.0.0.1", "-p", str(code_port)],
        as_service(env, "code-server"), tmp,
    )
    dagster = [
        ManagedProcess(RUN_WORKERS_PROGRAM, [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                       pooled_system_of_record(as_service(env, RUN_WORKERS_PROGRAM), pooler), tmp),
        ManagedProcess("dispatcher", [str(BIN / "constellation-dev"), "dispatcher"], as_service(env, "dispatcher"), tmp),
        ManagedProcess("gpu-agent", [str(BIN / "constellation-dev"), "gpu-agent"], as_service(env, "gpu-agent"), tmp),
        ManagedProcess(
            "dagster-webserver",
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(dagit_port)],
            as_service(env, "dagster-webserver"), tmp,
        ),
    ]
    processes = [*first, code_server, *dagster]
    try:
        prometheus.start()
        jaeger.start()
        for process in first:
            process.start()
        wait_for(lambda: port_open("127.0.0.1", pooler.port), timeout=20, what="PgBouncer", interval=0.1)
        wanted = serving if serving is not None else simulated
        wait_for(lambda: len(serving_devices(database_url)) >= wanted, timeout=120,
                 what=f"{wanted} device workers to register", interval=0.5)
        code_server.start()
        wait_for(lambda: code_server_serving("127.0.0.1", code_port), timeout=120, what="the code server",
                 interval=0.5)
        for process in dagster:
            process.start()
        api = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: httpx.get(f"{api}/readyz").status_code == 200, timeout=60, what="API ready")
        yield {"api": api, "ws": f"ws://127.0.0.1:{api_port}", "dagit": f"http://127.0.0.1:{dagit_port}",
               "processes": processes, "database_url": database_url, "dagster_home": str(home),
               "local_dir": local_dir, "prometheus": prometheus.url, "jaeger": jaeger.query_url, "nats": nats_url}
    finally:
        prometheus.stop()
        jaeger.stop()
        for process in processes:
            if process.process is not None and not process.alive():
                print(f"--- {process.name} exited early; its log:\n{process.log_tail()}")
            process.stop()
        patch.undo()  # later modules must not inherit this stack's environment
        get_settings.cache_clear()
        if keep := os.environ.get("CONSTELLATION_E2E_KEEP_LOGS"):  # a folder to keep every process's log in
            for log in [*(p.log_path for p in processes), tmp / "prometheus" / "prometheus.log",
                        tmp / "jaeger" / "jaeger.log"]:
                if log.exists():
                    Path(keep).mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, Path(keep) / log.name)
        shutil.rmtree(tmp, ignore_errors=True)

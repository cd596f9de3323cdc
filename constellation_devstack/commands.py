"""`constellation-dev`: start, prepare and stop the local stack (used by the Makefile)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from constellation_core.settings import API_SERVER_ARGS, REPO_ROOT, Settings, get_settings
from constellation_core.waiting import free_port, wait_for
from constellation_devstack import credentials
from constellation_devstack.jaeger import CONFIG as JAEGER_CONFIG
from constellation_devstack.jaeger import JaegerServer, jaeger_binary, otel_env
from constellation_devstack.nats import NATS_CREDENTIALS_ENV, PROGRAM_USERS, NatsServer
from constellation_devstack.pgbouncer import RUN_WORKERS_PROGRAM, PgBouncer
from constellation_devstack.postgres import (
    PG_CREDENTIALS_ENV,
    PROGRAM_ROLES,
    PostgresCluster,
    ensure_login_roles,
    with_login,
)
from constellation_devstack.prometheus import PrometheusServer, Target
from constellation_devstack.setup import (
    create_database,
    create_stream,
    dagster_storage_ready,
    prepare_stack,
    schema_at_head,
)

app = typer.Typer(help="Run Constellation's local stack.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
BIN = Path(sys.executable).parent


def _local_cluster(settings: Settings) -> PostgresCluster:
    return PostgresCluster(settings.local_dir / "postgres", make_url(settings.database_url).port or 5432)


def _local_nats(settings: Settings) -> NatsServer:
    port = int(settings.nats_url.rsplit(":", 1)[1])
    return NatsServer(settings.local_dir / "nats" / "jetstream", port)


def _local_jaeger(settings: Settings) -> JaegerServer:
    """The demo's Jaeger (its ports from the settings)."""
    return JaegerServer(settings.local_dir / "jaeger", settings.jaeger_otlp_port, settings.jaeger_query_port,
                        settings.jaeger_query_grpc_port, settings.jaeger_health_port)


def _local_prometheus(settings: Settings) -> PrometheusServer:
    """The demo's Prometheus: it scrapes the API (with its token), the GPU agent's exporter, the usage
    service and the dispatcher."""
    return PrometheusServer(settings.local_dir / "prometheus", settings.prometheus_port, [
        Target("api", [f"127.0.0.1:{settings.api_port}"], token=True),
        Target("gpu-agent", [f"127.0.0.1:{settings.gpu_agent_metrics_port}"]),
        Target("usage", [f"127.0.0.1:{settings.usage_port}"]),
        Target("dispatcher", [f"127.0.0.1:{settings.dispatcher_metrics_port}"]),
    ])


def _local_pgbouncer(settings: Settings) -> PgBouncer:
    dagster = PROGRAM_ROLES["dagster-daemon"]  # only Dagster's processes go through it
    logins = {dagster: credentials.scram_verifier(_local_cluster(settings).passwords()[dagster])}
    return PgBouncer(settings.local_dir / "pgbouncer", settings.pgbouncer_port, settings.sync_database_url, logins)


def _dagster_home(settings: Settings) -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or settings.local_dir / "dagster_home")


def _stack_env(settings: Settings, *, local_postgres: bool, local_nats: bool) -> dict[str, str]:
    from constellation_core.devices import SIMULATED_ENV, nvml_devices

    simulated = {}
    if SIMULATED_ENV not in os.environ and not nvml_devices():
        # No GPU here: the demo declares two simulated devices (labelled so everywhere).
        simulated[SIMULATED_ENV] = "2"
    # The demo's Postgres and NATS refuse anonymous clients: each program gets URLs with its own role's
    # and user's password (`_credentials_env`); the shared environment has none.
    return {
        **simulated,
        "DATABASE_URL": (_local_cluster(settings).public_url(make_url(settings.database_url).database)
                         if local_postgres else settings.sync_database_url),
        "NATS_URL": _local_nats(settings).public_url if local_nats else settings.nats_url,
        **({} if local_postgres else {"DAGSTER_PG_URL": settings.dagster_storage_url}),
        "DAGSTER_HOME": str(_dagster_home(settings)),
        "DAGSTER_CODE_SERVER_HOST": settings.dagster_code_server_host,
        "DAGSTER_CODE_SERVER_PORT": str(settings.dagster_code_server_port),
        "USAGE_PORT": str(settings.usage_port),
        "PYTHONUNBUFFERED": "1",
    }


def _exit_on_sigterm() -> None:
    # Turn SIGTERM into SystemExit so `finally` blocks stop what we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@app.command(context_settings=PASSTHROUGH)
def with_services(ctx: typer.Context) -> None:
    """Start a throwaway Postgres+PostGIS and NATS (free ports, temp dirs), run a command, stop them.

    The command sees DATABASE_URL (a migrated `constellation` database), NATS_URL and
    CONSTELLATION_TEST_PG_ADMIN_URL (for creating more databases), all logging in as superuser/admin, and
    where the service roles' and users' passwords are (CONSTELLATION_PG_CREDENTIALS, CONSTELLATION_NATS_CREDENTIALS).
    """
    _exit_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="constellation-services-"))
    tmp.chmod(0o755)  # the postgres user must reach its data folder inside
    pg = PostgresCluster(tmp / "postgres", free_port(), tuned_for_tests=True)
    nats = NatsServer(tmp / "nats" / "jetstream", free_port())
    rc = 1
    try:
        pg.start()
        pg.ensure_service_roles()
        nats.start()
        create_stream(nats.url)
        database_url = pg.url("constellation")
        create_database(database_url)
        from constellation_core.db import migrate

        migrate(database_url)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "NATS_URL": nats.url,
            # The service users' and roles' passwords, so an end-to-end stack runs each process as its own.
            NATS_CREDENTIALS_ENV: str(nats.credentials_file),
            PG_CREDENTIALS_ENV: str(pg.credentials_file),
            "CONSTELLATION_TEST_PG_ADMIN_URL": pg.url(),
        }
        typer.echo(f"services: Postgres {pg.public_url()} · NATS {nats.public_url} (superuser and admin credentials "
                   "in CONSTELLATION_TEST_PG_ADMIN_URL, DATABASE_URL and NATS_URL)", err=True)
        rc = subprocess.call(ctx.args, env=env)
    finally:
        nats.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    raise typer.Exit(rc)


@app.command()
def postgres() -> None:
    """Run the demo's Postgres in the foreground (for the supervisor)."""
    cluster = _local_cluster(get_settings())
    cluster.init()
    argv = cluster.foreground_argv()
    os.execvp(argv[0], argv)


@app.command()
def pgbouncer() -> None:
    """Run the demo's PgBouncer in the foreground (for the supervisor)."""
    pooler = _local_pgbouncer(get_settings())
    pooler.write_config()
    argv = pooler.argv()
    os.execvp(argv[0], argv)


@app.command()
def prometheus() -> None:
    """Run the demo's Prometheus in the foreground (for the supervisor)."""
    argv = _local_prometheus(get_settings()).argv()
    os.execvp(argv[0], argv)


@app.command()
def nats() -> None:
    """Run the demo's NATS with JetStream in the foreground (for the supervisor)."""
    server = _local_nats(get_settings())
    server.store_dir.mkdir(parents=True, exist_ok=True)
    argv = server.argv()
    os.execvp(argv[0], argv)


@app.command()
def gpu_agent(interval: Annotated[float, typer.Option(help="Seconds between samples")] = 1.0) -> None:
    """Sample every device (NVML, or the honest figures of simulated/CPU devices), publish to NATS and
    export to Prometheus (DCGM exporter's names, on `metrics_host`:`gpu_agent_metrics_port`)."""
    import asyncio

    from prometheus_client import start_http_server

    from constellation_core.db import sync_engine
    from constellation_core.devices import discover
    from constellation_core.logs import configure_logging
    from constellation_core.telemetry import DcgmExporter, run_agent

    settings = get_settings()
    configure_logging("gpu-agent", settings.log_level)
    devices = discover()
    exporter = DcgmExporter()
    start_http_server(settings.gpu_agent_metrics_port, addr=settings.metrics_host)
    typer.echo(f"gpu-agent: sampling {', '.join(d.label for d in devices)} every {interval}s; metrics on "
               f"{settings.metrics_host}:{settings.gpu_agent_metrics_port}")
    asyncio.run(run_agent(devices, sync_engine(settings.sync_database_url), settings.nats_url, interval=interval,
                          exporter=exporter))


@app.command()
def device_workers() -> None:
    """Start a local Ray (or join the cluster at RAY_ADDRESS) and keep one device worker per device."""
    from constellation_core.devices import discover
    from constellation_core.logs import configure_logging
    from constellation_ray.host import HostConfig, serve

    settings = get_settings()
    configure_logging("device-host", settings.log_level)
    config = HostConfig(
        database_url=settings.sync_database_url, nats_url=settings.nats_url,
        demo_imagery_dir=str(settings.local_dir / "imagery"), ray_address=os.environ.get("RAY_ADDRESS") or None,
    )
    where = f"the Ray cluster at {config.ray_address}" if config.ray_address else "a local Ray"
    typer.echo(f"device-workers: starting {where}")
    serve(config, discover())


@app.command()
def dispatcher() -> None:
    """Launch a Dagster run the moment a job is queued (the dispatch sensor reconciles behind it)."""
    import asyncio

    from prometheus_client import start_http_server

    from constellation_core.db import sync_engine
    from constellation_core.logs import configure_logging
    from constellation_dagster.dispatcher import run_dispatcher

    settings = get_settings()
    configure_logging("dispatcher", settings.log_level)
    start_http_server(settings.dispatcher_metrics_port, addr=settings.metrics_host)  # launches and queue waits
    asyncio.run(run_dispatcher(sync_engine(settings.sync_database_url), settings.nats_url, settings.dagit_base_url))


@app.command(context_settings=PASSTHROUGH)
def wait_ready(ctx: typer.Context, timeout: float = 300,
               code_server: Annotated[bool, typer.Option(help="Also wait for the Dagster code server")] = False) -> None:
    """Wait until the databases are migrated and Dagster's storage exists, then exec the command."""
    settings = get_settings()
    wait_for(lambda: schema_at_head(settings.sync_database_url), timeout=timeout, what="migrations", interval=0.5)
    wait_for(lambda: dagster_storage_ready(settings.dagster_storage_url), timeout=timeout, what="Dagster storage",
             interval=0.5)
    if code_server:
        wait_for(lambda: code_server_serving(settings.dagster_code_server_host, settings.dagster_code_server_port),
                 timeout=timeout, what="the Dagster code server", interval=0.5)
    os.execvp(ctx.args[0], ctx.args)


def code_server_serving(host: str, port: int) -> bool:
    """The code server answers a health check (it has loaded the code location)."""
    return subprocess.call([str(BIN / "dagster"), "api", "grpc-health-check", "--host", host, "--port", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


@app.command()
def setup(seed: Annotated[bool, typer.Option(help="Seed the demo account, area and jobs")] = True) -> None:
    """Create databases, migrate, create the NATS stream and Dagster storage; seed the demo."""
    settings = get_settings()
    wait_for(lambda: create_database(settings.sync_database_url) is not None, timeout=120, what="Postgres",
             interval=0.5)
    if credentials_file := os.environ.get(PG_CREDENTIALS_ENV):  # the demo's own server: its service roles log in
        ensure_login_roles(settings.sync_database_url, json.loads(Path(credentials_file).read_text()))
    prepare_stack(settings, _dagster_home(settings))
    typer.echo("setup: databases migrated, NATS stream and Dagster storage ready")
    if not seed:
        return
    import httpx

    from constellation_devstack.seed import seed_demo

    api_url = f"http://{settings.api_host}:{settings.api_port}"
    # "Constellation is up" is a promise the user acts on at once (`constellation submit …`): the API
    # answers first, also when there is nothing to seed (it starts beside this program).
    wait_for(lambda: httpx.get(f"{api_url}/readyz", timeout=5).status_code == 200, timeout=120,
             what=f"the API at {api_url}", interval=0.2)
    key, seeded = seed_demo(settings, settings.local_dir / "dev-api-key", api_url)
    typer.echo(
        "\n".join(
            [
                "",
                "",
                "Constellation is up" + (" (demo seeded: 3 jobs submitted)" if seeded else " (existing data kept)"),
                f"  API:        {api_url}   (docs: {api_url}/docs, stream: ws://{settings.api_host}:{settings.api_port}/stream)",
                f"  Dashboard:  {api_url}/app/signin/#key={key}   (demo: the dev key is filled in)",
                *([f"  Live dev:   {dev_url}/app/signin/#key={key}   (`make dev`: pages reload as you edit "
                   "web/; the API and Dagster's code reload too)"] if (dev_url := os.environ.get(
                       "CONSTELLATION_WEB_DEV_URL")) else []),
                f"  Dagit:      {settings.dagit_base_url}",
                f"  Usage:      {api_url}/usage/leaderboard (also http://127.0.0.1:{settings.usage_port})",
                f"  Prometheus: http://127.0.0.1:{settings.prometheus_port}   (the API, GPU telemetry as DCGM "
                f"names; 15 days in {settings.local_dir}/prometheus)",
                f"  Traces:     Jaeger's API http://127.0.0.1:{settings.jaeger_query_port}/api/traces?service="
                "constellation-api   (a job's waterfall is on its page in the dashboard)",
                f"  Dev API key (account 'demo', admin): {key}",
                f"  Try:        curl -H 'Authorization: Bearer {key}' {api_url}/readyz",
                f"  Logs:       {settings.local_dir}/logs/     Stop: Ctrl-C or `make stop`",
                "",
            ]
        )
    )


def _credentials_env(settings: Settings, program: str, *, local_postgres: bool, local_nats: bool) -> dict[str, str]:
    """The URLs that log `program` into the demo's own Postgres and NATS as its own role and user."""
    env = {}
    if local_nats and program in PROGRAM_USERS:
        env["NATS_URL"] = _local_nats(settings).url_for(PROGRAM_USERS[program])
    if local_postgres and program in PROGRAM_ROLES:
        role = PROGRAM_ROLES[program]
        password = _local_cluster(settings).passwords()[role]
        env["DATABASE_URL"] = with_login(settings.sync_database_url, role, password)
        storage = with_login(settings.dagster_storage_url, role, password)
        # Dagster's processes reach their storage through the demo's PgBouncer (see pgbouncer.py);
        # `setup` creates it directly, and makes the service roles log in with their passwords.
        if program == "setup":
            env["DAGSTER_PG_URL"] = storage
            env[PG_CREDENTIALS_ENV] = str(_local_cluster(settings).credentials_file)
        else:
            pooler = _local_pgbouncer(settings)
            env["DAGSTER_PG_URL"] = pooler.pooled_url(storage)
            if program == RUN_WORKERS_PROGRAM:
                # Its run workers connect afresh for every run (a forked worker never uses its parent's
                # connections): through PgBouncer each gets a warm server connection instead of a new
                # Postgres backend to fork, authenticate and warm up.
                env["DATABASE_URL"] = pooler.pooled_url(env["DATABASE_URL"])
    if program == "api" and not settings.metrics_token:  # the token Prometheus scrapes /metrics with
        env["CONSTELLATION_METRICS_TOKEN"] = _local_prometheus(settings).token()
    if program == "jaeger":
        env.update(_local_jaeger(settings).env())
    elif program not in ("postgres", "pgbouncer", "nats", "prometheus"):  # every traced process
        env.update(otel_env(_local_jaeger(settings).otlp_url))
    return env


def _rendered(name: str, command: str, *, priority: int, log_dir: Path, to_console: bool = False,
             oneshot: bool = False, stopsignal: str = "TERM", environment: dict[str, str] | None = None) -> str:
    logs = (
        "stdout_logfile=/dev/stdout\nstdout_logfile_maxbytes=0"
        if to_console
        else f"stdout_logfile={log_dir / (name + '.log')}\nstdout_logfile_maxbytes=20MB"
    )
    restart = "autorestart=false\nstartsecs=0\nexitcodes=0" if oneshot else "autorestart=true\nstartsecs=2\nstartretries=5"
    # Values are URLs of URL-safe passwords: no quote, comma or `%` for supervisord to trip on.
    env = ",".join(f'{key}="{value}"' for key, value in (environment or {}).items())
    return (
        f"[program:{name}]\ncommand={command}\ndirectory={REPO_ROOT}\npriority={priority}\n"
        f"redirect_stderr=true\n{logs}\n{restart}\nstopsignal={stopsignal}\nstopwaitsecs=20\nstopasgroup=true\n"
        "killasgroup=true\n" + (f"environment={env}\n" if env else "")
    )


# `make dev`: what each program reloads on (the API: uvicorn's own reloader; the others restart).
RELOAD_DIRS = {
    "api": ("api", "constellation_core"),
    "code-server": ("constellation_dagster", "constellation_core"),
    "dispatcher": ("constellation_dagster", "constellation_core"),
    "device-workers": ("constellation_ray", "constellation_core"),
    "gpu-agent": ("constellation_core",),
}


def _reloading(name: str, command: str) -> str:
    """`command` restarted by watchfiles whenever a Python file of the program's packages changes."""
    dirs = " ".join(str(REPO_ROOT / d) for d in RELOAD_DIRS[name])
    return (f"{BIN / 'watchfiles'} --target-type command --filter python --sigint-timeout 10 "
            f"{shlex.quote(command)} {dirs}")


def web_dev_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.web_dev_port}"


def supervisor_config(settings: Settings, *, local_postgres: bool, local_nats: bool, dev_mode: bool = False) -> str:
    local = settings.local_dir
    log_dir = local / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # Logs are for this machine's operator only: the folder 0700, every log 0600 (older ones too);
    # supervisord's umask (below) makes every file the stack writes private to its owner.
    log_dir.chmod(0o700)
    for existing in log_dir.iterdir():
        if existing.is_file():
            existing.chmod(0o600)
    dev = BIN / "constellation-dev"

    def _program(name: str, command: str, **options) -> str:  # each with its own credentials
        if dev_mode and name in RELOAD_DIRS and name != "api":
            command = _reloading(name, command)
        environment = _credentials_env(settings, name, local_postgres=local_postgres, local_nats=local_nats)
        if dev_mode and name == "setup":
            environment["CONSTELLATION_WEB_DEV_URL"] = web_dev_url(settings)
        return _rendered(name, command, log_dir=log_dir, **options, environment=environment)

    api_reload = "".join(f" --reload-dir {REPO_ROOT / d}" for d in RELOAD_DIRS["api"])
    api_reload = f" --reload{api_reload}" if dev_mode else ""

    programs = []
    if local_postgres:
        programs.append(_program("postgres", f"{dev} postgres", priority=10, stopsignal="INT"))
        programs.append(_program("pgbouncer", f"{dev} pgbouncer", priority=10, stopsignal="INT"))
    if local_nats:
        programs.append(_program("nats", f"{dev} nats", priority=10))
    programs += [
        _program("setup", f"{dev} setup", priority=20, to_console=True, oneshot=True),
        _program(
            "api",
            f"{dev} wait-ready {BIN / 'uvicorn'} {shlex.join(API_SERVER_ARGS)} --host {settings.api_host} "
            f"--port {settings.api_port} --no-access-log{api_reload}",
            priority=30,
        ),
        _program(
            "code-server",
            f"{dev} wait-ready {BIN / 'dagster'} api grpc -m constellation_dagster.definitions "
            f"--location-name constellation_dagster -h {settings.dagster_code_server_host} "
            f"-p {settings.dagster_code_server_port}",
            priority=30,
        ),
        _program("dagster-daemon", f"{dev} wait-ready --code-server {BIN / 'dagster-daemon'} run -w workspace.yaml",
                 priority=30),
        _program("gpu-agent", f"{dev} wait-ready {dev} gpu-agent", priority=30),
        _program("prometheus", f"{dev} prometheus", priority=30),
        _program("jaeger", f"{jaeger_binary()} --config={JAEGER_CONFIG}", priority=20),
        _program("dispatcher", f"{dev} wait-ready {dev} dispatcher", priority=30),
        _program("device-workers", f"{dev} wait-ready {dev} device-workers", priority=30),
        _program("usage", f"{dev} wait-ready {REPO_ROOT / 'usage_go' / 'bin' / 'usage'}", priority=30),
        _program(
            "dagster-webserver",
            f"{dev} wait-ready --code-server {BIN / 'dagster-webserver'} -w workspace.yaml -h 127.0.0.1 "
            f"-p {settings.dagit_port}",
            priority=30,
        ),
    ]
    if dev_mode:  # the dashboard from its sources, live: it proxies every other path to the API
        programs.append(_rendered(
            "web", f"{REPO_ROOT / 'web' / 'node_modules' / '.bin' / 'next'} dev {REPO_ROOT / 'web'} "
            f"--port {settings.web_dev_port} --hostname 127.0.0.1", priority=40, log_dir=log_dir,
            environment={"CONSTELLATION_API_URL": f"http://{settings.api_host}:{settings.api_port}",
                         "NEXT_TELEMETRY_DISABLED": "1"}))
    return (
        f"[supervisord]\nnodaemon=true\numask=077\nlogfile={log_dir / 'supervisord.log'}\n"
        f"pidfile={local / 'supervisord.pid'}\n"
        f"childlogdir={log_dir}\n\n"
        f"[unix_http_server]\nfile={local / 'supervisor.sock'}\nchmod=0700\n\n"
        f"[supervisorctl]\nserverurl=unix://{local / 'supervisor.sock'}\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        + "\n".join(programs)
    )


@app.command()
def demo(dev: Annotated[bool, typer.Option(
        "--dev", help="Reload on change: the API and Dagster's code, the device workers, the dashboard "
                      "(Next.js dev server, on WEB_DEV_PORT)")] = False) -> None:
    """Run the whole stack under supervisord in the foreground (Ctrl-C stops everything)."""
    settings = get_settings()
    settings.local_dir.mkdir(parents=True, exist_ok=True)
    if (pid := _running_supervisor(settings)) is not None:
        typer.echo(f"the demo is already running (supervisord pid {pid}); `make stop` first", err=True)
        raise typer.Exit(1)
    # DATABASE_URL / NATS_URL in the environment point at external services: start none of ours.
    local_postgres = "DATABASE_URL" not in os.environ
    local_nats = "NATS_URL" not in os.environ
    if local_postgres:
        _local_cluster(settings).init()  # fail here, visibly, rather than inside the supervisor
    config = settings.local_dir / "supervisord.conf"
    config.touch(mode=0o600)
    config.chmod(0o600)  # it holds each program's NATS password
    config.write_text(supervisor_config(settings, local_postgres=local_postgres, local_nats=local_nats, dev_mode=dev))
    os.environ.update(_stack_env(settings, local_postgres=local_postgres, local_nats=local_nats))
    os.environ[STACK_MARKER] = _marker(settings)
    typer.echo(f"starting the stack under supervisord ({config}); logs in {settings.local_dir / 'logs'}")
    supervisor = subprocess.Popen([str(BIN / "supervisord"), "-c", str(config)])
    # Ctrl-C reaches supervisord too (same process group): let it shut everything down, then sweep.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: supervisor.terminate())
    rc = supervisor.wait()
    leftovers = _sweep(settings)
    typer.echo(f"stack stopped{f' (ended {len(leftovers)} leftover processes)' if leftovers else ''}")
    raise typer.Exit(rc)


STACK_MARKER = "CONSTELLATION_STACK"


def _marker(settings: Settings) -> str:
    return str(settings.local_dir.resolve())


def _sweep(settings: Settings) -> list[int]:
    """End every process that still carries this stack's marker in its environment.

    Dagster's code servers run in sessions of their own, out of reach of the supervisor's process
    groups, and can outlive it; the marker (inherited by every descendant) finds them all.
    """
    found = processes_carrying(f"{STACK_MARKER}={_marker(settings)}")
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)

    def all_gone() -> bool:
        return not [pid for pid in found if Path(f"/proc/{pid}").exists() and _alive(pid)]

    try:
        wait_for(all_gone, timeout=10, what="leftover processes to exit", interval=0.2)
    except Exception:  # noqa: BLE001 - then they are killed
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return found


def processes_carrying(env_entry: str) -> list[int]:
    """The live processes (not zombies; not this one nor its parent) with `env_entry` (`NAME=value`) in
    their environment: everything a stack started, since each descendant inherits it."""
    wanted, mine = env_entry.encode(), {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0") and _alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _running_supervisor(settings: Settings) -> int | None:
    """The pid of this checkout's running supervisord, if any."""
    try:
        pid = int((settings.local_dir / "supervisord.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@app.command()
def stop() -> None:
    """Stop a running `make demo` and everything it started; returns once all of it has exited."""
    settings = get_settings()
    pid = _running_supervisor(settings)
    if pid is None:
        typer.echo("nothing to stop: no `make demo` is running from this checkout")
        return
    subprocess.call([str(BIN / "supervisorctl"), "-c", str(settings.local_dir / "supervisord.conf"), "shutdown"])
    wait_for(lambda: _running_supervisor(settings) is None, timeout=90, what="the demo to stop", interval=0.2)
    _sweep(settings)
    typer.echo("stopped")


if __name__ == "__main__":
    app()

"""The local stack: what `make demo` writes (logs, data) is its owner's alone; it says it is up only when it is."""

from __future__ import annotations

import contextlib
import os
import stat

import httpx

from constellation_core.settings import Settings
from constellation_devstack.commands import supervisor_config


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_logs_are_private_to_their_owner(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    old = logs / "api.log"
    old.write_text("a line from an earlier run\n")
    old.chmod(0o644)  # as a log written before this change was

    config = supervisor_config(Settings(CONSTELLATION_LOCAL_DIR=tmp_path), local_postgres=False, local_nats=False)

    assert _mode(logs) == 0o700
    assert _mode(old) == 0o600
    assert "\numask=077\n" in config.split("[unix_http_server]")[0]


def _programs(config: str) -> dict[str, str]:
    """Each supervisor program's section, by name."""
    sections = config.split("[program:")[1:]
    return {section.split("]", 1)[0]: section for section in sections}


def test_make_dev_reloads_the_api_and_dagsters_code_and_runs_the_dashboard_live(tmp_path):
    """`make dev` (`constellation-dev demo --dev`): uvicorn reloads the API on a change to its packages,
    watchfiles restarts the code server, dispatcher, device workers and GPU agent on a change to theirs,
    and the dashboard runs in Next.js's dev server, told where the API is (it proxies to it)."""
    settings = Settings(CONSTELLATION_LOCAL_DIR=tmp_path, CONSTELLATION_METRICS_TOKEN="unused", WEB_DEV_PORT=3222)
    dev = _programs(supervisor_config(settings, local_postgres=False, local_nats=False, dev_mode=True))
    plain = _programs(supervisor_config(settings, local_postgres=False, local_nats=False))

    assert "--reload --reload-dir" in dev["api"] and "/api " in dev["api"] and "--reload" not in plain["api"]
    for name, package in (("code-server", "constellation_dagster"), ("dispatcher", "constellation_dagster"),
                          ("device-workers", "constellation_ray"), ("gpu-agent", "constellation_core")):
        command = dev[name].split("command=", 1)[1].split("\n", 1)[0]
        assert "watchfiles --target-type command --filter python" in command and f"/{package}" in command, name
        assert "watchfiles" not in plain[name]
    assert "next dev" in dev["web"] and "--port 3222" in dev["web"] and "web" not in plain
    assert 'CONSTELLATION_API_URL="http://127.0.0.1:8000"' in dev["web"]
    assert 'CONSTELLATION_WEB_DEV_URL="http://127.0.0.1:3222"' in dev["setup"]


def test_free_ports_come_from_below_the_kernels_ephemeral_range():
    """A stack picks its ports first and starts its parts one after another: a port from the ephemeral
    range can meanwhile become the local end of an outgoing connection (an e2e stack's GPU agent found
    its metrics port taken so), one below it cannot."""
    import socket

    from constellation_core.waiting import FREE_PORTS_FROM, _ephemeral_ports_start, free_port

    low = _ephemeral_ports_start()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50, "each port is handed out once"
    assert all(FREE_PORTS_FROM <= port < low for port in ports), ports
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[0]))


def test_make_demo_says_it_is_up_only_once_the_api_answers(database_url, pg_admin_url, nats_url, tmp_path):
    """The banner is a promise the user acts on at once (`constellation submit …`). A `make demo` on
    existing data (nothing to seed) printed it as soon as its setup was done, before the API listened."""
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from sqlalchemy import create_engine

    from constellation_core.accounts import create_account, issue_api_key
    from constellation_core.settings import API_SERVER_ARGS
    from constellation_core.waiting import free_port, wait_for
    from tests.conftest import drop_database, fresh_database_url

    local = tmp_path / "local"
    local.mkdir()
    engine = create_engine(database_url)
    with engine.begin() as conn:  # a demo that ran before: its account and dev key exist
        (local / "dev-api-key").write_text(issue_api_key(conn, create_account(conn, "demo", role="admin")))
    engine.dispose()
    dagster_url = fresh_database_url(pg_admin_url, "setup_dagster")
    api_port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "DAGSTER_DATABASE_URL": dagster_url, "NATS_URL": nats_url,
           "CONSTELLATION_LOCAL_DIR": str(local), "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "API_PORT": str(api_port)}
    bin_dir = Path(sys.executable).parent
    setup = subprocess.Popen([str(bin_dir / "constellation-dev"), "setup"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(setup.stdout), daemon=True).start()
    api = None
    try:
        wait_for(lambda: any("setup: databases migrated" in line for line in lines), timeout=120,
                 what="setup to prepare the databases", interval=0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            setup.wait(timeout=3)  # the API is not up: setup must still be waiting, silent
        assert setup.poll() is None and not any("Constellation is up" in line for line in lines), "".join(lines)

        api = subprocess.Popen([str(bin_dir / "uvicorn"), *API_SERVER_ARGS, "--port", str(api_port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert setup.wait(timeout=120) == 0, "".join(lines)
        wait_for(lambda: any("Constellation is up" in line for line in lines), timeout=10, what="the banner")
        assert httpx.get(f"http://127.0.0.1:{api_port}/readyz").status_code == 200
    finally:
        for process in (setup, api):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
        drop_database(dagster_url)

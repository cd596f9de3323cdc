"""The local stack's files are private: what `make demo` writes (logs, data) is its owner's alone."""

from __future__ import annotations

import stat

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

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

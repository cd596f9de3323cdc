"""The API under uvicorn on a free port for a bench (quiet logs, ready before it returns)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from constellation_core.waiting import free_port, wait_for

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def served_api(workers: int = 1, source: Path | None = None) -> Iterator[str]:
    """Yields the API's base URL (`http://127.0.0.1:<port>`); its stderr goes to a temporary log.
    `source`: another checkout of the repository (a baseline) whose code the API runs instead."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="constellation-bench-")) / "api.log"
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    if source is not None:
        env["PYTHONPATH"] = str(source)  # ahead of this checkout's editable install
    api = subprocess.Popen(
        [str(BIN / "uvicorn"), "--factory", "api.main:app", "--port", str(port), "--workers", str(workers),
         "--no-access-log", "--log-level", "warning"],
        env=env, cwd=source, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, timeout=60, what=f"API ready (log: {log})")
        yield base
    finally:
        api.terminate()
        api.wait(30)

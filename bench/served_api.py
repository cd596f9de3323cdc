"""The API under uvicorn on a free port for a bench (quiet logs, ready before it returns)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from constellation_core.settings import API_SERVER_ARGS, REPO_ROOT
from constellation_core.waiting import free_port, wait_for

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def served_api(workers: int = 1, source: Path | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """Yields the API's base URL (`http://127.0.0.1:<port>`); its stderr goes to a temporary log.
    `source`: another checkout of the repository (a baseline) whose code the API runs instead; `env`:
    variables on top of this process's (e.g. the OTEL_* that turn tracing on)."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="constellation-bench-")) / "api.log"
    env = {**os.environ, "LOG_LEVEL": "WARNING", **(env or {})}
    server_args = list(API_SERVER_ARGS)
    if source is not None:
        env["PYTHONPATH"] = str(source)  # ahead of this checkout's editable install
        server_args = _server_args_of(env)
    api = subprocess.Popen(
        [str(BIN / "uvicorn"), *server_args, "--port", str(port), "--workers", str(workers),
         "--no-access-log", "--log-level", "warning"],
        env=env, cwd=source, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    _PIDS[base] = api.pid
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, timeout=60, what=f"API ready (log: {log})")
        yield base
    finally:
        _PIDS.pop(base, None)
        api.terminate()
        api.wait(30)


def _server_args_of(env: dict[str, str]) -> list[str]:
    """uvicorn's flags as the checkout on env's PYTHONPATH served its API (older ones: the factory alone)."""
    code = ("from constellation_core import settings; "
            "print('\\n'.join(getattr(settings, 'API_SERVER_ARGS', ('--factory', 'api.main:app'))))")
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout.split()


_PIDS: dict[str, int] = {}
_TICKS = os.sysconf("SC_CLK_TCK")


def api_cpu_s(base: str) -> float:
    """CPU seconds (user + system) spent so far by the API `served_api` serves at `base`, its worker
    processes included (they live as long as it does)."""
    def cpu(pid: int) -> tuple[float, list[int]]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return 0.0, []
        return (int(fields[11]) + int(fields[12])) / _TICKS, [int(child) for child in children]

    total, pending = 0.0, [_PIDS[base]]
    while pending:
        seconds, children = cpu(pending.pop())
        total += seconds
        pending += children
    return total


@contextlib.contextmanager
def checkouts(baseline: str | None) -> Iterator[list[tuple[str, Path | None]]]:
    """[(label, source)] for `served_api`: this checkout, preceded by a git worktree of `baseline` (a
    commit) when one is given; the worktree is removed afterwards."""
    if baseline is None:
        yield [("this checkout", None)]
        return
    worktree = Path(tempfile.mkdtemp(prefix="constellation-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(worktree), baseline],
                   check=True, capture_output=True)
    try:
        yield [(f"baseline {baseline}", worktree), ("this checkout", None)]
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
        shutil.rmtree(worktree.parent, ignore_errors=True)

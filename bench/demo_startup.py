"""Time from `constellation-dev demo` to an all-healthy stack, and to the first seeded job succeeding.

Run with no demo running: `.local/venv/bin/python bench/demo_startup.py`. It stops the demo after.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from constellation_core.settings import REPO_ROOT, get_settings
from constellation_core.waiting import wait_for

DAEMONS = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"
LOCATION = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"


def _graphql(url: str, query: str) -> dict:
    return httpx.post(f"{url}/graphql", json={"query": query}, timeout=5).json()["data"]


def main() -> None:
    settings = get_settings()
    api = f"http://{settings.api_host}:{settings.api_port}"
    usage = f"http://127.0.0.1:{settings.usage_port}"
    dagit = settings.dagit_base_url
    dev = Path(sys.executable).parent / "constellation-dev"
    started = time.perf_counter()
    demo = subprocess.Popen([str(dev), "demo"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marks: dict[str, float] = {}

    def mark(name: str, check) -> None:
        wait_for(check, timeout=300, what=name, interval=0.1)
        marks[name] = time.perf_counter() - started

    try:
        mark("api ready", lambda: httpx.get(f"{api}/readyz", timeout=1).status_code == 200)
        mark("usage ready", lambda: httpx.get(f"{usage}/readyz", timeout=1).status_code == 200)
        mark("dagit location loaded", lambda: any(
            e["name"] == "constellation_dagster" and e["loadStatus"] == "LOADED"
            for e in _graphql(dagit, LOCATION)["workspaceOrError"]["locationEntries"]))
        mark("dagster daemons healthy", lambda: all(
            d["healthy"] for d in _graphql(dagit, DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
            if d["required"]))
        marks["all healthy"] = max(marks.values())
        engine = create_engine(settings.sync_database_url)

        def first_success() -> bool:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM jobs WHERE state = 'succeeded'")).scalar_one() > 0

        mark("a job succeeded", first_success)
        engine.dispose()
    finally:
        subprocess.run([str(dev), "stop"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        demo.wait(timeout=60)
    for name, seconds in marks.items():
        print(f"{name:<26} {seconds:6.1f} s")


if __name__ == "__main__":
    main()

"""POST /jobs → `running` and → `succeeded`, as a stream client sees them (the P1 baseline).

With `make demo` running: `.local/venv/bin/python bench/dispatch_latency.py --jobs 10`.
Jobs are submitted one at a time onto an idle stack, so each figure is pure dispatch latency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx
from websockets.sync.client import connect

from constellation_core.settings import get_settings

AREA = {"type": "Polygon", "coordinates": [[[6.10, 46.18], [6.12, 46.18], [6.12, 46.20], [6.10, 46.20], [6.10, 46.18]]]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    settings = get_settings()
    key = (settings.local_dir / "dev-api-key").read_text().strip()
    api = f"http://{settings.api_host}:{settings.api_port}"
    to_running: list[float] = []
    to_succeeded: list[float] = []
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}) as client:
        for i in range(args.jobs):
            with connect(f"ws://{settings.api_host}:{settings.api_port}/stream?api_key={key}") as ws:
                started = time.perf_counter()
                job_id = client.post("/jobs", json={"name": f"bench {i}", "zoom": 14, "area": AREA}).json()["id"]
                while True:
                    message = json.loads(ws.recv(timeout=120))
                    if message.get("job_id") != job_id or message.get("type") != "job.state":
                        continue
                    state = message["payload"]["state"]
                    if state == "running":
                        to_running.append(time.perf_counter() - started)
                    elif state in ("succeeded", "failed", "canceled"):
                        to_succeeded.append(time.perf_counter() - started)
                        break
    for name, values in (("POST → running", to_running), ("POST → succeeded", to_succeeded)):
        print(f"{name:<18} p50 {statistics.median(values):5.2f} s   p95 {percentile(values, 0.95):5.2f} s   "
              f"(n={len(values)})")


if __name__ == "__main__":
    main()

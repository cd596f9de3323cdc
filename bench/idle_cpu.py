"""The whole stack's CPU while nothing is queued: share of one core over a window, per process.

With `make demo` running and its seeded jobs done: `.local/venv/bin/python bench/idle_cpu.py --seconds 60`.
It waits until Dagster has no active run, then reads /proc for every process that carries this
checkout's stack marker (everything `make demo` started, code servers and run workers included):
user + system CPU over the window, plus what exited children left to their parents (cutime/cstime),
grouped by program. Goal (issue 11): the total ≤ 10 % of one core.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

from demo_client import wait_dagster_idle

from constellation_core.settings import get_settings
from constellation_devstack.commands import STACK_MARKER, _marker

TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = ("postgres", "nats-server", "dagster-daemon", "dagster-webserver", "dagster api grpc", "uvicorn",
          "dispatcher", "gpu-agent", "usage", "supervisord", "zygote", "ray")


def stack_processes(marker: bytes) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def cpu_ticks(pid: int) -> tuple[int, int] | None:
    """(own user+system, reaped children's user+system) in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def group(cmdline: str) -> str:
    return next((g for g in GROUPS if g in cmdline), cmdline.split(" ", 1)[0].rsplit("/", 1)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    settings = get_settings()
    wait_dagster_idle(settings)
    marker = f"{STACK_MARKER}={_marker(settings)}".encode()
    before = {pid: (cmd, cpu_ticks(pid)) for pid, cmd in stack_processes(marker).items()}
    started = time.monotonic()
    time.sleep(args.seconds)  # the measurement window itself
    elapsed = time.monotonic() - started
    after = {pid: (cmd, cpu_ticks(pid)) for pid, cmd in stack_processes(marker).items()}
    used: dict[str, float] = defaultdict(float)
    for pid, (cmd, ticks) in after.items():
        if ticks is None:
            continue
        own, children = ticks
        old = before.get(pid, (cmd, (0, 0)))[1] or (0, 0)
        used[group(cmd)] += (own - old[0] + children - old[1]) / TICKS
    total = sum(used.values())
    print(f"{len(after)} stack processes, {elapsed:.0f} s with nothing queued")
    for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        if seconds > 0:
            print(f"  {name:28s} {seconds / elapsed:6.1%} of a core")
    print(f"total             {total / elapsed:6.1%} of one core   (goal ≤ 10 %)")


if __name__ == "__main__":
    main()

"""The whole stack's CPU while nothing is queued: share of one core over a window, per process.

With `make demo` running and its seeded jobs done: `.local/venv/bin/python bench/idle_cpu.py --seconds 60`.
It waits until Dagster has no active run and has created none for 30 s (after a backlog the export
sensors launch catch-up exports for a while), then prints the machine's busy CPU over the window
(/proc/stat: with nothing else running, that is the stack), and for the processes that carry this
checkout's stack marker (everything `make demo` started, code servers and run workers included) and
live through the window, their user + system CPU grouped by program. What short-lived processes used
(Postgres backends of closed connections, code servers that came and went) shows in the machine figure
only. Goal (issue 11): ≤ 10 % of one core. `--settle 120` waits two more minutes first (the steady state).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

from demo_client import wait_dagster_quiet

from constellation_core.settings import get_settings
from constellation_devstack.commands import STACK_MARKER, _marker

TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = ("pgbouncer", "postgres", "nats-server", "dagster-daemon", "dagster-webserver", "dagster api grpc", "uvicorn",
          "dispatcher", "gpu-agent", "usage", "supervisord", "zygote", "ray")


def stack_processes(marker: bytes) -> dict[int, str]:
    """Processes that carry the marker, and their descendants (Postgres overwrites its backends'
    environment with their process titles, so those are found through their postmaster)."""
    found, parents, cmdlines = {}, {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            pid = int(entry.name)
            cmdlines[pid] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[pid] = cmdlines[pid]
        except (OSError, ValueError):
            continue
    for pid in cmdlines:
        ancestor = parents.get(pid)
        while ancestor and ancestor not in found:
            ancestor = parents.get(ancestor)
        if ancestor:
            found[pid] = cmdlines[pid]
    return found


def cpu_ticks(pid: int) -> int | None:
    """The process's own user + system CPU, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def machine_busy_ticks() -> int:
    """All CPUs' non-idle time (user, nice, system, irq, softirq, steal), in clock ticks."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq + steal


def group(cmdline: str) -> str:
    return next((g for g in GROUPS if g in cmdline), cmdline.split(" ", 1)[0].rsplit("/", 1)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--settle", type=float, default=0,
                        help="seconds to wait once Dagster is quiet: Ray's device actors spend ~4.5 %% of a core each "
                             "in the first minute after a backlog; 120 measures the steady state")
    args = parser.parse_args()
    settings = get_settings()
    wait_dagster_quiet(settings)
    time.sleep(args.settle)  # a chosen wait, not a condition: the stack settles by itself
    marker = f"{STACK_MARKER}={_marker(settings)}".encode()
    before = {pid: cpu_ticks(pid) for pid in stack_processes(marker)}
    busy_before, started = machine_busy_ticks(), time.monotonic()
    time.sleep(args.seconds)  # the measurement window itself
    busy, elapsed = machine_busy_ticks() - busy_before, time.monotonic() - started
    used: dict[str, float] = defaultdict(float)
    after = stack_processes(marker)
    for pid, cmd in after.items():
        now, then = cpu_ticks(pid), before.get(pid)
        if now is not None and then is not None:
            used[group(cmd)] += (now - then) / TICKS
    print(f"{len(after)} stack processes, {elapsed:.0f} s with nothing queued")
    for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        if seconds > 0:
            print(f"  {name:28s} {seconds / elapsed:6.1%} of a core   (processes alive through the window)")
    print(f"machine busy      {busy / TICKS / elapsed:6.1%} of one core   (goal for the stack ≤ 10 %)")


if __name__ == "__main__":
    main()

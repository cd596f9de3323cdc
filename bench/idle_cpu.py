"""The whole stack's CPU while nothing is queued: share of one core over a window, per process.

With `make demo` running and its seeded jobs done: `.local/venv/bin/python bench/idle_cpu.py --seconds 60`.
It waits until Dagster has no active run and has created none for 30 s (after a backlog the export
sensors launch catch-up exports for a while), then prints, for the processes that carry this checkout's
stack marker (everything `make demo` started, code servers and run workers included), their user +
system CPU over the window grouped by program, with what their children that ended in the window used
(Postgres backends of closed connections, code servers that came and went: counted whole, so slightly
over), and the sum: the stack's CPU. Beside it, the machine's busy CPU (/proc/stat), which also holds
what the host runs besides the stack (its own agents, kernel threads; on a VM, steal).
Goal (issue 11): the stack ≤ 10 % of one core. `--settle 120` waits two more minutes first (the steady state).
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


def cpu_ticks(pid: int) -> tuple[int, int] | None:
    """The process's own user + system CPU, and that of its children it has waited for (processes
    that ended: a Postgres backend of a closed connection, a code server that came and went), in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


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
    ended: dict[str, float] = defaultdict(float)
    after = stack_processes(marker)
    for pid, cmd in after.items():
        now, then = cpu_ticks(pid), before.get(pid)
        if now is None:
            continue
        if then is None:  # started during the window: all of its CPU counts
            then = (0, now[1])
        used[group(cmd)] += (now[0] - then[0]) / TICKS
        ended[group(cmd)] += (now[1] - then[1]) / TICKS
    print(f"{len(after)} stack processes, {elapsed:.0f} s with nothing queued")
    for name in sorted(used, key=lambda g: -(used[g] + ended[g])):
        if used[name] + ended[name] > 0:
            extra = f"   (+ {ended[name] / elapsed:.1%} in processes that ended)" if ended[name] > 0 else ""
            print(f"  {name:28s} {(used[name] + ended[name]) / elapsed:6.1%} of a core{extra}")
    stack = (sum(used.values()) + sum(ended.values())) / elapsed
    machine = busy / TICKS / elapsed
    print(f"the stack         {stack:6.1%} of one core   (goal ≤ 10 %)")
    print(f"machine busy      {machine:6.1%} of one core   (the stack, and what this machine runs besides it: "
          f"{max(machine - stack, 0):.1%} — its own agents, kernel threads, steal)")


if __name__ == "__main__":
    main()

"""The whole stack's CPU while nothing is queued: share of one core over a window, per process.

With `make demo` running and its seeded jobs done: `.local/venv/bin/python bench/idle_cpu.py --seconds 60`.
It waits until Dagster has no active run and has created none for 30 s (after a backlog the export
sensors launch catch-up exports for a while), then prints, for the processes that carry this checkout's
stack marker (everything `make demo` started, code servers, run workers and Postgres backends included),
their user + system CPU over the window grouped by program, and the sum: the stack's CPU. It looks at
every such process twice a second, so a process that ends in the window counts with what it used up
to its last look (one that starts and ends between two looks, under half a second, is missed). It
does not count what a parent's ended children used (the kernel adds their whole life's CPU to their
parent's, when the parent waits for them). Beside it, the machine's busy CPU (/proc/stat), which also
holds what the host runs besides the stack (its own agents, kernel threads, this bench's looks; on a VM, steal).
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


def cpu_ticks(pid: int) -> int | None:
    """The process's own user + system CPU, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


LOOK_S = 0.5


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
    first: dict[int, int] = {}  # pid → its CPU when first seen (0 for one that started in the window)
    last: dict[int, tuple[str, int]] = {}  # pid → its command line and its CPU when last seen
    busy_before, started = machine_busy_ticks(), time.monotonic()
    opening = True
    while True:
        for pid, cmd in stack_processes(marker).items():
            ticks = cpu_ticks(pid)
            if ticks is not None:
                first.setdefault(pid, ticks if opening else 0)
                last[pid] = cmd, ticks
        opening = False
        if time.monotonic() - started >= args.seconds:
            break
        time.sleep(min(LOOK_S, args.seconds - (time.monotonic() - started)))  # the next look (the window itself)
    busy, elapsed = machine_busy_ticks() - busy_before, time.monotonic() - started
    used: dict[str, float] = defaultdict(float)
    ended: dict[str, float] = defaultdict(float)
    after = stack_processes(marker)
    for pid, (cmd, ticks) in last.items():
        spent = (ticks - first[pid]) / TICKS
        (used if pid in after else ended)[group(cmd)] += spent
    print(f"{len(last)} stack processes ({len(last) - len(after)} ended), {elapsed:.0f} s with nothing queued")
    for name in sorted(used.keys() | ended.keys(), key=lambda g: -(used[g] + ended[g])):
        if used[name] + ended[name] > 0:
            extra = f"   (of which {ended[name] / elapsed:.1%} in processes that ended)" if ended[name] > 0 else ""
            print(f"  {name:28s} {(used[name] + ended[name]) / elapsed:6.1%} of a core{extra}")
    stack = (sum(used.values()) + sum(ended.values())) / elapsed
    machine = busy / TICKS / elapsed
    print(f"the stack         {stack:6.1%} of one core   (goal ≤ 10 %)")
    print(f"machine busy      {machine:6.1%} of one core   (the stack, and what this machine runs besides it: "
          f"{max(machine - stack, 0):.1%} — its own agents, kernel threads, steal)")


if __name__ == "__main__":
    main()

"""The CPU of `make demo`'s processes over a window, by program: what `idle_cpu.py` and the P9 bench print.

A `StackCpu` looks at every process that carries this checkout's stack marker (everything `make demo`
started, and their descendants: code servers, run workers, Postgres backends, Ray's processes) twice
a second, on a thread of its own. A process counts with its own user + system CPU from its first look
to its last: one that ends in the window counts with what it used up to its last look; one that
starts and ends between two looks (under half a second) is missed. A parent's count of its ended
children is not used (the kernel adds their whole life's CPU to it, not only the window's).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path

from constellation_core.settings import Settings
from constellation_devstack.commands import STACK_MARKER, _marker

TICKS = os.sysconf("SC_CLK_TCK")
LOOK_S = 0.5
# (what a command line holds, the program it is counted as), first match wins
GROUPS = (
    ("pgbouncer", "pgbouncer"), ("postgres", "postgres"), ("nats-server", "nats-server"),
    ("dagster-daemon", "dagster-daemon"), ("dagster-webserver", "dagster-webserver"),
    ("dagster api grpc", "dagster api grpc"), ("uvicorn", "uvicorn"), ("dispatcher", "dispatcher"),
    ("multiprocessing.spawn", "api planning processes"),  # (the API's only multiprocessing children)
    ("gpu-agent", "gpu-agent"), ("usage", "usage"), ("supervisord", "supervisord"),
    ("zygote", "zygote (run workers)"), ("constellation_ray.compute", "device compute"),
    ("ray::DeviceActor", "device workers"), ("ray", "ray"),
)


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


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (user, nice, system, irq, softirq, steal), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


def group(cmdline: str) -> str:
    return next((name for part, name in GROUPS if part in cmdline), cmdline.split(" ", 1)[0].rsplit("/", 1)[-1])


class StackCpu:
    """`start()`, then `stop()` → each program's CPU seconds over the window (with those of its
    processes that ended, apart), and how many processes were seen and ended."""

    def __init__(self, settings: Settings) -> None:
        self.marker = f"{STACK_MARKER}={_marker(settings)}".encode()
        self.first: dict[int, int] = {}  # pid → its CPU when first seen (0 for one that started in the window)
        self.last: dict[int, tuple[str, int]] = {}  # pid → its command line and its CPU when last seen
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._look_until_stopped, name="stack-cpu", daemon=True)

    def _look(self, opening: bool) -> dict[int, str]:
        found = stack_processes(self.marker)
        for pid, cmd in found.items():
            ticks = cpu_ticks(pid)
            if ticks is not None:
                self.first.setdefault(pid, ticks if opening else 0)
                self.last[pid] = cmd, ticks
        return found

    def _look_until_stopped(self) -> None:
        while not self._stopped.wait(LOOK_S):
            self._look(opening=False)

    def start(self) -> StackCpu:
        self._look(opening=True)
        self._thread.start()
        return self

    def stop(self) -> tuple[dict[str, float], dict[str, float], int, int]:
        """(program → CPU s of its processes still running, program → CPU s of those that ended,
        processes seen, processes ended)."""
        self._stopped.set()
        self._thread.join()
        alive = self._look(opening=False)
        used: dict[str, float] = defaultdict(float)
        ended: dict[str, float] = defaultdict(float)
        for pid, (cmd, ticks) in self.last.items():
            (used if pid in alive else ended)[group(cmd)] += (ticks - self.first[pid]) / TICKS
        return used, ended, len(self.last), len(self.last) - len(alive)


def measure(settings: Settings, seconds: float) -> tuple[dict[str, float], dict[str, float], int, int, float]:
    """`StackCpu` over `seconds` from now; also returns the window's length."""
    started = time.monotonic()
    sampler = StackCpu(settings).start()
    time.sleep(seconds)  # the window itself
    return (*sampler.stop(), time.monotonic() - started)

"""Recovery: the chaos test's backlog (48 jobs on two simulated devices) drained with every kill, side by
side with the same backlog drained with none, in one run.

`.local/venv/bin/python bench/chaos_drain.py` (no demo needed: each run starts its own Postgres, NATS and
stack through `tests/test_chaos.py`). Prints each run's figures and the ratio of the drain times (goal:
≤ 1.5). The backlog outlasts the kills (the test's 24 jobs drain before the last one on a fast host, and
the drain then measures the kills' schedule: 3 s apart after each recovery). The run with kills goes
first; the run without gets as many jobs as it ended with. About six minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(baseline: bool, jobs: int) -> dict:
    env = {**os.environ, "CONSTELLATION_CHAOS_BASELINE": "1" if baseline else "0",
           "CONSTELLATION_CHAOS_JOBS": str(jobs)}
    done = subprocess.run(
        [str(BIN / "constellation-dev"), "with-services", "--", sys.executable, "-m", "pytest", "-q", "-s",
         "-p", "no:cacheprovider", "tests/test_chaos.py"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    line = next((line for line in done.stdout.splitlines() if line.startswith("chaos figures: ")), None)
    if line is None:
        sys.exit(f"the chaos test printed no figures (exit {done.returncode}):\n{done.stdout[-4000:]}")
    figures = json.loads(line.removeprefix("chaos figures: "))
    figures["passed"] = done.returncode == 0
    figures["timeline"] = [line for line in done.stdout.splitlines() if line.startswith("chaos +")]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=48,
                        help="the backlog (the test's own is 24: on a fast host it drains before the last kill)")
    jobs = parser.parse_args().jobs
    # The kills first: should the backlog drain before the last kill all the same, that run tops it up
    # as it goes, and the run without kills then gets as many jobs from the start.
    with_kills = run(baseline=False, jobs=jobs)
    without = run(baseline=True, jobs=with_kills["jobs"])
    for name, figures in (("no kills", without), ("every kill", with_kills)):
        print(f"{name:>10}: drain {figures['drain_s']:6.1f} s  succeeded {figures['succeeded']}/{figures['jobs']}  "
              f"duplicates {figures['duplicates']}  lost events {figures['lost_events']}  "
              f"held slots {figures['held_slots']}  kills {len(figures['kills'])}  test passed {figures['passed']}")
    print("\n".join(with_kills["timeline"]))
    print(f"drain with kills / without: {with_kills['drain_s'] / without['drain_s']:.2f} (goal ≤ 1.5)")
    if with_kills.get("topped_up"):
        print(f"(the backlog drained before the last kill: the kill run added {with_kills['topped_up']} jobs "
              f"as it went, the run without kills had all {without['jobs']} from the start)")


if __name__ == "__main__":
    main()

"""P9: backlog throughput — how much of a device's bare rate a backlog of small jobs gets.

With the demo running on one simulated device whose compute has one core (the orchestration has the
other), as the goal is stated:

    CONSTELLATION_SIMULATED_GPUS=1 CONSTELLATION_SIMULATED_DEVICE_THREADS=1 make demo
    .local/venv/bin/python bench/p9_backlog_throughput.py --jobs 40

(also reported: the default two devices, and `--jobs 160`). It waits until Dagster is idle, measures
the device's bare rate (rasterio read + PyTorch over demo tiles, the model and batch size of the
jobs, as many torch threads as the device's worker uses), submits N small jobs at once (100–300 tiles,
both modes, priorities −5…5, in a seeded random order), waits for all, and prints from each batch's
interval on its device (`tile_chunks.started_at/finished_at`):
- tiles/s over the whole drain (first submission → last batch) ÷ the bare rate (goal ≥ 0.90);
- each device's busy share of the drain;
- overtakes: a job that started before an earlier-submitted job of the same or higher priority
  (goal: none), and how many of them started on a device the earlier job was not bound to (a
  serial job is bound to one device at dispatch);
- the longest wait of a job for its first batch, by priority;
- the machine's CPU over the drain, and the stack's by program (`stack_cpu.py`): what each job costs
  besides the model's compute.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import time
from datetime import UTC, datetime

import numpy as np
import torch
from demo_client import demo_api, wait_dagster_idle, wait_finished
from shapely.geometry import box, mapping
from sqlalchemy import create_engine, text
from stack_cpu import StackCpu, machine_cpu_seconds

from constellation_core.inference.imagery import TileReader, ensure_demo_scene
from constellation_core.inference.model import TileClassifier
from constellation_core.settings import get_settings
from constellation_core.tiles import plan_tiles
from constellation_core.waiting import wait_for

ZOOM = 17
BATCH = 32


def small_areas(count: int, rng: random.Random, low: int, high: int) -> list[tuple[dict, int]]:
    """`count` boxes inside the demo scene, each covering between `low` and `high` tiles at ZOOM."""
    areas = []
    while len(areas) < count:
        west, south = rng.uniform(6.10, 6.17), rng.uniform(46.18, 46.21)
        width = rng.uniform(0.008, 0.03)
        area = box(west, south, west + width, south + width * 0.7)
        tiles = len(plan_tiles(area, ZOOM, 10_000))
        if low <= tiles <= high:
            areas.append((mapping(area), tiles))
    return areas


def bare_rate(settings, model_path, threads: int, *, one_at_a_time: bool = False) -> float:
    """The device's rate with nothing around it: read and classify demo tiles in batches, each batch
    read as the device workers read it (`TileReader.read_many`), or its tiles one at a time (as they
    were read before 2026-12-05: the bare rate this bench compared with until then)."""
    torch.set_num_threads(threads)
    grid = plan_tiles(box(6.12, 46.19, 6.16, 46.21), ZOOM, 10_000) * 3  # 495 tiles
    classifier = TileClassifier(model_path, "cpu")
    started = time.perf_counter()
    with TileReader(ensure_demo_scene(settings.local_dir / "imagery")) as reader:
        for start in range(0, len(grid), BATCH):
            batch = grid[start:start + BATCH]
            classifier.predict(np.stack([reader.read(t.z, t.x, t.y) for t in batch]) if one_at_a_time
                               else reader.read_many(batch))
    return len(grid) / (time.perf_counter() - started)


def run_worker_cpu(daemon_log, run_ids: set[str]) -> list[float]:
    """Each run's worker CPU, from the line a run worker logs as it ends (`constellation_dagster.zygote`)."""
    found = []
    with open(daemon_log, errors="replace") as log:
        for line in log:
            match = re.search(r"run worker of (\S+) \(.*\) ended: exit code \d+, ([\d.]+) s of CPU", line)
            if match and match[1] in run_ids:
                found.append(float(match[2]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--min-tiles", type=int, default=100)
    parser.add_argument("--max-tiles", type=int, default=300)
    args = parser.parse_args()
    settings = get_settings()
    rng = random.Random(args.seed)
    engine = create_engine(settings.sync_database_url)
    with engine.connect() as conn:
        model_version = conn.execute(text("SELECT model_version FROM tile_results ORDER BY id DESC LIMIT 1")).scalar()
    if model_version is None:
        raise SystemExit("no tile result yet: let the demo's seeded jobs finish first")

    with demo_api(settings) as client:
        wait_dagster_idle(settings)

        # A demo that has just started marks every device gone until its worker registers again: the
        # devices are those that serve, the same at two looks 2 s apart.
        last_look: list = []

        def serving_steadily():
            with engine.connect() as conn:
                now = conn.execute(text("SELECT uuid, name FROM gpus WHERE gone_at IS NULL ORDER BY name")).all()
            steady = bool(now) and now == last_look
            last_look[:] = now
            return now if steady else None

        devices = wait_for(serving_steadily, timeout=120, what="the devices whose workers serve", interval=2.0)
        areas = small_areas(args.jobs, rng, args.min_tiles, args.max_tiles)
        bodies = [{"name": f"P9 {i}", "zoom": ZOOM, "area": area, "batch_size": BATCH,
                   "mode": rng.choice(["serial", "parallel"]), "priority": rng.randint(-5, 5)}
                  for i, (area, _) in enumerate(areas)]
        submitted_at = datetime.now(UTC)
        cpu_before = machine_cpu_seconds()
        by_program = StackCpu(settings).start()
        jobs = []
        for body in bodies:
            created = client.post("/jobs", json=body).raise_for_status().json()
            jobs.append((created["id"], body["priority"], body["mode"], created["tiles_total"]))
        states = wait_finished(client, [j[0] for j in jobs], timeout=3600)
        cpu_used = machine_cpu_seconds() - cpu_before  # (the client's polling included: a small share)
        used, ended, _, _ = by_program.stop()
    failed = [j for j, s in states.items() if s != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} bench jobs did not succeed: {failed[:5]}")

    with engine.connect() as conn:
        batches = conn.execute(
            text("SELECT job_id::text AS job_id, device_uuid, started_at, finished_at, tiles FROM tile_chunks "
                 "WHERE job_id = ANY(CAST(:ids AS uuid[])) ORDER BY started_at"),
            {"ids": [j[0] for j in jobs]},
        ).all()
        bound = dict(conn.execute(text("SELECT id::text, device_uuid FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"),
                                  {"ids": [j[0] for j in jobs]}).all())
        dagster_runs = conn.execute(text("SELECT dagster_run_id FROM runs WHERE job_id = ANY(CAST(:ids AS uuid[]))"),
                                    {"ids": [j[0] for j in jobs]}).scalars().all()
        threads = conn.execute(
            text("SELECT max((spec->>'torch_threads')::int) FROM gpus WHERE uuid = ANY(:uuids)"),
            {"uuids": list({b.device_uuid for b in batches})},
        ).scalar()
    engine.dispose()

    wait_dagster_idle(settings)
    bare = bare_rate(settings, settings.local_dir / "models" / f"{model_version}.pt", threads or 1)
    bare_one_at_a_time = bare_rate(settings, settings.local_dir / "models" / f"{model_version}.pt", threads or 1,
                                   one_at_a_time=True)

    tiles = sum(b.tiles for b in batches)
    drain = (max(b.finished_at for b in batches) - submitted_at).total_seconds()
    rate = tiles / drain
    per_device = {d.uuid: d.name for d in devices}
    firsts = {}
    for b in batches:  # (ordered by start)
        firsts.setdefault(b.job_id, b)
    first_batch = {job_id: firsts[job_id].started_at for job_id, *_ in jobs}
    first_device = {job_id: firsts[job_id].device_uuid for job_id, *_ in jobs}
    overtakes = [
        (earlier[0], later[0])
        for i, earlier in enumerate(jobs) for later in jobs[i + 1:]
        if later[1] <= earlier[1] and first_batch[later[0]] < first_batch[earlier[0]]
    ]
    # Of those, the later job started on a device the earlier (serial) job was not bound to: that device
    # could not have run it; the binding at dispatch (`choose_device`) picked the device that freed later.
    elsewhere = [(e, later) for e, later in overtakes if bound.get(e) and bound[e] != first_device[later]]
    waits = {p: max((first_batch[j] - submitted_at).total_seconds() for j, pr, *_ in jobs if pr == p)
             for p in sorted({j[1] for j in jobs})}

    print(f"{len(jobs)} jobs, {tiles} tiles (zoom {ZOOM}, batch {BATCH}; "
          f"{sum(1 for j in jobs if j[2] == 'serial')} serial), on {len(devices)} device(s), torch threads {threads}")
    print(f"drain             {drain:8.1f} s   {rate:8.1f} tiles/s")
    print(f"bare rate         {bare:8.1f} tiles/s per device (same model, batch, threads; nothing else)")
    print(f"P9 ratio          {rate / (bare * len(devices)):8.3f}   (drain ÷ bare × devices; goal ≥ 0.90)")
    print(f"  (bare with its tiles read one at a time: {bare_one_at_a_time:.1f} tiles/s, "
          f"ratio {rate / (bare_one_at_a_time * len(devices)):.3f})")
    for uuid, name in per_device.items():
        busy = sum((b.finished_at - b.started_at).total_seconds() for b in batches if b.device_uuid == uuid)
        print(f"  {name:28s} busy {busy / drain:6.1%} of the drain")
    programs = {name: used[name] + ended[name] for name in used.keys() | ended.keys()}
    model_cpu = programs.get("device compute", 0.0)
    print(f"machine CPU       {cpu_used:8.1f} core-s over the drain: the model on the devices {model_cpu:.1f} s, "
          f"everything else {(cpu_used - model_cpu) / len(jobs):.2f} core-s per job (the device workers' tile "
          "reading among it, which the bare rate also does)")
    # The drain cannot be much shorter than all that CPU spread over every core: the ratio's ceiling here
    # (about: the CPU is counted to the last job's end, a little past its last batch).
    ceiling = tiles * os.cpu_count() / (cpu_used * bare * len(devices))
    print(f"  at that CPU, {os.cpu_count()} cores allow a ratio of about {ceiling:.3f} (a drain as long as the "
          "CPU ÷ the cores)")
    print("  by program (core-s over the drain, per job): " + ", ".join(
        f"{name} {cpu:.1f} ({cpu / len(jobs):.3f})" for name, cpu in sorted(programs.items(), key=lambda p: -p[1])
        if cpu >= 0.05))
    worker_cpu = run_worker_cpu(settings.local_dir / "logs" / "dagster-daemon.log", set(dagster_runs))
    if worker_cpu:
        print(f"run workers       {statistics.median(worker_cpu):8.3f} s of CPU per run (median of {len(worker_cpu)}; "
              f"mean {statistics.fmean(worker_cpu):.3f} s)")
    print(f"overtakes         {len(overtakes)}   (a later job of the same or lower priority started first; goal 0)"
          + (f"  e.g. {[(e[:8], later[:8]) for e, later in overtakes[:3]]}" if overtakes else ""))
    if overtakes:
        print(f"  of which {len(elsewhere)} on a device the earlier job was not bound to (serial jobs are bound "
              "to a device at dispatch)")
    median_wait = statistics.median((first_batch[j[0]] - submitted_at).total_seconds() for j in jobs)
    print("first batch wait  " + "  ".join(f"p{p:+d}: {w:.0f} s" for p, w in waits.items())
          + f"   (median over jobs {median_wait:.0f} s)")


if __name__ == "__main__":
    main()

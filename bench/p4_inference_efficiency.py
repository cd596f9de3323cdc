"""P4: orchestrated tiles/s ÷ a bare PyTorch loop over the same tiles, model, batch size and device.

With `make demo` running: `.local/venv/bin/python bench/p4_inference_efficiency.py [--zoom 17]`.
It submits one serial job, waits for it, takes its tiles/s on the device (tiles ÷ the time from its
first batch's start to its last batch's end on the device worker, from `tile_chunks`), then runs the
bare loop — read the same tiles with rasterio, classify in batches of the same size with the same
model file on the same device with the worker's thread count — in this process, and prints both and
their ratio. Pairs alternate (orchestrated, bare), so background drift hits both alike.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from dataclasses import dataclass

import httpx
import torch
from demo_client import GENEVA, demo_api, wait_dagster_idle, wait_finished
from sqlalchemy import create_engine, text

from constellation_core.inference.imagery import TileReader, ensure_demo_scene
from constellation_core.inference.model import TileClassifier
from constellation_core.settings import Settings, get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zoom", type=int, default=17)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="alternating orchestrated/bare pairs")
    parser.add_argument("--tracing", action="store_true",
                        help="each repeat also runs the job untraced (its trace context not sampled): tracing's "
                             "cost on P4 in one run")
    args = parser.parse_args()
    settings = get_settings()
    with demo_api(settings) as client:
        repeats = [measure_repeat(args, settings, client, i) for i in range(args.repeats)]
    first = repeats[0]["traced"]
    print(f"device            {first.device}")
    print(f"tiles             {first.tiles} (zoom {args.zoom}, batch {args.batch_size}), {args.repeats} alternating "
          f"{'triples' if args.tracing else 'pairs'}")
    for kind in ("traced", "untraced") if args.tracing else ("traced",):
        label = {"traced": "orchestrated" if not args.tracing else "orch. traced", "untraced": "orch. untraced"}[kind]
        rates = [r[kind].tiles_per_s for r in repeats]
        print(f"{label:<17} {statistics.median(rates):8.1f} tiles/s median  {[round(x) for x in rates]}"
              "  (device worker: results, progress in Postgres + NATS)")
    bare = [r["bare"] for r in repeats]
    print(f"bare loop         {statistics.median(bare):8.1f} tiles/s median  {[round(x) for x in bare]}"
          "  (rasterio read + PyTorch, nothing else)")
    for kind in ("traced", "untraced") if args.tracing else ("traced",):
        ratios = [r[kind].tiles_per_s / r["bare"] for r in repeats]
        name = "P4 ratio" + {"traced": " (traced)" if args.tracing else "", "untraced": " (untraced)"}[kind]
        print(f"{name:<17} {statistics.median(ratios):8.3f}  median of the repeats' ratios "
              f"{[round(r, 2) for r in ratios]}  (goal ≥ 0.97; each ran back to back with its bare loop)")
    if args.tracing:
        costs = [r["traced"].tiles_per_s / r["untraced"].tiles_per_s for r in repeats]
        print(f"traced ÷ untraced {statistics.median(costs):8.3f}  median  {[round(c, 3) for c in costs]}  "
              f"(goal: tracing loses ≤ 3 %); spans per job: traced {[r['traced'].spans for r in repeats]}, "
              f"untraced {[r['untraced'].spans for r in repeats]}")


@dataclass
class Orchestrated:
    tiles_per_s: float
    device: str
    threads: int | None
    tiles: int
    model_version: str
    job_id: str
    spans: int


def traceparent(sampled: bool) -> str:
    """A W3C trace context for the submission: the stack samples parent-based, so a job whose context
    says "not sampled" records no span anywhere (API, dispatcher, run worker, device workers)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{'01' if sampled else '00'}"


def run_job(args, settings: Settings, client: httpx.Client, sampled: bool) -> Orchestrated:
    wait_dagster_idle(settings)
    body = {"name": "bench P4", "zoom": args.zoom, "area": GENEVA, "mode": "serial", "batch_size": args.batch_size}
    submitted = client.post("/jobs", json=body, headers={"traceparent": traceparent(sampled)})
    job_id = submitted.raise_for_status().json()["id"]
    if wait_finished(client, [job_id], timeout=600)[job_id] != "succeeded":
        raise SystemExit(f"the bench job {job_id} did not succeed")
    engine = create_engine(settings.sync_database_url)
    with engine.connect() as conn:
        step = conn.execute(
            text("SELECT sum(c.tiles) AS tiles, extract(epoch FROM max(c.finished_at) - min(c.started_at)) AS seconds, "
                 "min(g.name) AS device, min((g.spec->>'torch_threads')::int) AS threads "
                 "FROM tile_chunks c JOIN gpus g ON g.uuid = c.device_uuid WHERE c.job_id = :id"),
            {"id": job_id},
        ).one()
        model_version = conn.execute(text("SELECT min(model_version) FROM tile_results WHERE job_id = :id"),
                                     {"id": job_id}).scalar_one()
    engine.dispose()
    trace = client.get(f"/jobs/{job_id}/trace")
    spans = len(trace.json().get("spans", [])) if trace.status_code == 200 else 0
    return Orchestrated(step.tiles / float(step.seconds), step.device, step.threads, int(step.tiles), model_version,
                        job_id, spans)


def run_bare(args, settings: Settings, job: Orchestrated) -> float:
    """The bare loop over the job's tiles: read with rasterio, classify in batches, nothing else."""
    wait_dagster_idle(settings)
    engine = create_engine(settings.sync_database_url)
    with engine.connect() as conn:
        tiles = conn.execute(text("SELECT z, x, y FROM tiles WHERE job_id = :id ORDER BY chunk_no, z, x, y"),
                             {"id": job.job_id}).all()
    engine.dispose()
    model_path = settings.local_dir / "models" / f"{job.model_version}.pt"
    # The same device means the same compute: a simulated device's step had a share of the cores.
    torch.set_num_threads(job.threads or torch.get_num_threads())
    started = time.perf_counter()
    classifier = TileClassifier(model_path, "cpu" if "simulated" in job.device or "CPU" in job.device else "cuda:0")
    with TileReader(ensure_demo_scene(settings.local_dir / "imagery")) as reader:
        for start in range(0, len(tiles), args.batch_size):
            batch = tiles[start:start + args.batch_size]
            classifier.predict(reader.read_many(batch))  # as the device workers read a batch
    return len(tiles) / (time.perf_counter() - started)


def measure_repeat(args, settings: Settings, client: httpx.Client, index: int) -> dict:
    """One repeat: the job (traced; with --tracing also untraced, in alternating order) and the bare loop."""
    kinds = ["traced", "untraced"] if args.tracing else ["traced"]
    if index % 2:
        kinds.reverse()
    found: dict = {kind: run_job(args, settings, client, sampled=kind == "traced") for kind in kinds}
    found["bare"] = run_bare(args, settings, found["traced"])
    return found


if __name__ == "__main__":
    main()

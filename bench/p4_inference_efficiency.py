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
import statistics
import time

import httpx
import numpy as np
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
    args = parser.parse_args()
    settings = get_settings()
    with demo_api(settings) as client:
        pairs = [measure_pair(args, settings, client) for _ in range(args.repeats)]
    device, count = pairs[0][2], pairs[0][3]
    orchestrated = statistics.median(p[0] for p in pairs)
    bare = statistics.median(p[1] for p in pairs)
    print(f"device            {device}")
    print(f"tiles             {count} (zoom {args.zoom}, batch {args.batch_size}), {args.repeats} alternating pairs")
    print(f"orchestrated      {orchestrated:8.1f} tiles/s median  {[round(p[0]) for p in pairs]}"
          "  (device worker: results, progress in Postgres + NATS)")
    print(f"bare loop         {bare:8.1f} tiles/s median  {[round(p[1]) for p in pairs]}"
          "  (rasterio read + PyTorch, nothing else)")
    pair_ratios = [p[0] / p[1] for p in pairs]
    print(f"P4 ratio          {orchestrated / bare:8.3f}  (ratio of the medians; goal ≥ 0.97)")
    print(f"pair ratios       {statistics.median(pair_ratios):8.3f} median  {[round(r, 2) for r in pair_ratios]}"
          "  (each pair ran back to back: less exposed to background load drifting)")


def measure_pair(args, settings: Settings, client: httpx.Client) -> tuple[float, float, str, int]:
    wait_dagster_idle(settings)
    body = {"name": "bench P4", "zoom": args.zoom, "area": GENEVA, "mode": "serial", "batch_size": args.batch_size}
    job_id = client.post("/jobs", json=body).raise_for_status().json()["id"]
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
        tiles = conn.execute(text("SELECT z, x, y FROM tiles WHERE job_id = :id ORDER BY chunk_no, z, x, y"),
                             {"id": job_id}).all()
        model_version = conn.execute(text("SELECT min(model_version) FROM tile_results WHERE job_id = :id"),
                                     {"id": job_id}).scalar_one()
    engine.dispose()
    orchestrated = step.tiles / float(step.seconds)
    wait_dagster_idle(settings)

    model_path = settings.local_dir / "models" / f"{model_version}.pt"
    # The same device means the same compute: a simulated device's step had a share of the cores.
    torch.set_num_threads(step.threads or torch.get_num_threads())
    started = time.perf_counter()
    classifier = TileClassifier(model_path, "cpu" if "simulated" in step.device or "CPU" in step.device else "cuda:0")
    with TileReader(ensure_demo_scene(settings.local_dir / "imagery")) as reader:
        for start in range(0, len(tiles), args.batch_size):
            batch = tiles[start:start + args.batch_size]
            classifier.predict(np.stack([reader.read(t.z, t.x, t.y) for t in batch]))
    bare = len(tiles) / (time.perf_counter() - started)
    return orchestrated, bare, step.device, len(tiles)


if __name__ == "__main__":
    main()

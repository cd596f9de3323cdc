from __future__ import annotations

import dagster as dg

from constellation_dagster.inference.ops import plan_tiles, start_run, summarise

JOB_ID_TAG = "constellation/job_id"
ACCOUNT_TAG = "constellation/account"
CORRELATION_TAG = "constellation/correlation_id"


@dg.job(
    description="Cover a job's area of interest with tiles and run the CNN over them.",
    # In-process: one worker process per run, no per-step process start-up.
    executor_def=dg.in_process_executor,
    tags={"constellation/kind": "tile_inference"},
)
def tile_inference() -> None:
    run_id = start_run()
    summarise(run_id, plan_tiles(run_id))

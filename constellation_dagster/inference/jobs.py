"""Tile-inference jobs, built from the devices the device workers serve.

- `tile_inference` (mode `parallel`): plan, admit the job to every device (one op per device, in its
  pool), follow it until done; the devices' workers share out the job's batches.
- `tile_inference_on_<device>` (mode `serial`): the same, on one device.

A step's pool is fixed when the job is defined, so the device of a serial job is chosen by choosing
the job (the dispatch sensor does that), never by run tags.
"""

import os

import dagster as dg
from sqlalchemy import select

from constellation_core.devices import Device, discover, from_spec
from constellation_dagster.inference.ops import infer, make_admit_op, plan_tiles

JOB_ID_TAG = "constellation/job_id"
ACCOUNT_TAG = "constellation/account"
CORRELATION_TAG = "constellation/correlation_id"
DEVICE_TAG = "constellation/device"  # a serial job's (and so its runs') device
PARALLEL_JOB = "tile_inference"


def serial_job_name(device: Device) -> str:
    return f"tile_inference_on_{device.slug}"


def build_jobs(devices: list[Device]) -> tuple[dg.JobDefinition, dict[str, dg.JobDefinition]]:
    """The parallel job and the serial job of each device (keyed by device uuid).

    Both run in the run worker's process (no step processes): planning, then one `admit_on_<device>`
    op per device — in that device's pool, so the run queue starts a run only while every device it
    uses has a free slot (`granularity: run` in the instance's `concurrency.pools`) — then `infer`,
    which follows the job on its devices until every batch is done."""
    admit_ops = {d.uuid: make_admit_op(d) for d in devices}

    @dg.job(
        name=PARALLEL_JOB,
        description="Plan an area's tiles and run the CNN over them on every device at once.",
        executor_def=dg.in_process_executor,
        tags={"constellation/mode": "parallel"},
    )
    def parallel() -> None:
        planned = plan_tiles()
        infer(admitted=[admit(planned=planned) for admit in admit_ops.values()])

    def serial_job(device: Device) -> dg.JobDefinition:
        @dg.job(
            name=serial_job_name(device),
            description=f"Plan an area's tiles and run the CNN over them on {device.label} alone.",
            executor_def=dg.in_process_executor,
            tags={"constellation/mode": "serial", DEVICE_TAG: device.uuid},
        )
        def serial() -> None:
            infer(admitted=[admit_ops[device.uuid](planned=plan_tiles())])

        return serial

    return parallel, {d.uuid: serial_job(d) for d in devices}


def code_location_devices() -> list[Device]:
    """The devices to build pools and ops for, when the code location loads.

    With a local Ray (the default) these are this machine's (CONSTELLATION_SIMULATED_GPUS, else NVML,
    else the CPU): exactly the devices its workers serve. On a cluster (`RAY_ADDRESS`), the devices
    its workers registered and still serve. A node that joins later needs this code server, the daemon
    (its run-worker zygote imported these jobs) and the dispatcher restarted: a `dagster api grpc`
    server does not load its definitions again on Dagit's *Reload*.
    """
    if not os.environ.get("RAY_ADDRESS"):
        return discover()
    from constellation_core.db import sync_engine
    from constellation_core.tables import gpus

    engine = sync_engine(os.environ["DATABASE_URL"])
    with engine.connect() as conn:
        specs = conn.execute(select(gpus.c.spec).where(gpus.c.gone_at.is_(None), gpus.c.spec.is_not(None))
                             .order_by(gpus.c.uuid)).scalars().all()
    if not specs:
        raise RuntimeError("RAY_ADDRESS is set but no device worker has registered a device yet: start "
                           "`constellation-dev device-workers` against the cluster first")
    return [from_spec(spec) for spec in specs]


# The graph's shape depends on the devices, so they are found when the code location loads.
DEVICES = code_location_devices()
tile_inference, serial_jobs = build_jobs(DEVICES)
ALL_JOBS = [tile_inference, *serial_jobs.values()]

"""GPU telemetry: samples honest about simulated devices, attributed to the job on the device, and
streamed to WebSocket clients that ask for them."""

from __future__ import annotations

import os

from fastapi.testclient import TestClient
from sqlalchemy import func, insert, update

from api.main import create_app
from constellation_core.accounts import create_account
from constellation_core.devices import simulated_devices
from constellation_core.settings import Settings
from constellation_core.tables import jobs, steps
from constellation_core.telemetry import FIELDS, run_agent, sample_all
from constellation_dagster.resources import GpuFleet
from tests.streams import next_message


def _busy_step(engine, device_index: int):
    """A job with an open inference step (this test process as its pid) on a simulated device."""
    with engine.begin() as conn:
        ids = GpuFleet(simulated_gpus=2).sync(conn)
        account_id = create_account(conn, f"telemetry-{os.urandom(3).hex()}")
        job_id = conn.execute(insert(jobs).values(
            name="telemetry", state="running", submitted_by="t", account_id=account_id, zoom=10,
            aoi=func.ST_GeomFromText("POLYGON((0 0,1 0,1 1,0 1,0 0))", 4326),
        ).returning(jobs.c.id)).scalar_one()
        step_id = conn.execute(insert(steps).values(
            job_id=job_id, gpu_id=ids[f"SIM-GPU-{device_index}"], step_key="admit_on_sim1", pid=os.getpid(),
        ).returning(steps.c.id)).scalar_one()
    return job_id, step_id


def test_samples_of_simulated_devices_are_labelled_and_attributed(engine):
    job_id, step_id = _busy_step(engine, 1)
    try:
        idle, busy = sample_all(simulated_devices(2), engine)
        assert set(busy.fields) == set(FIELDS)
        assert busy.simulated and "simulated" in busy.name
        assert busy.job_id == job_id and busy.pids == [os.getpid()]
        assert busy.fields["DCGM_FI_DEV_GPU_UTIL"] == 100 and busy.fields["DCGM_FI_DEV_FB_USED"] > 0
        assert busy.fields["DCGM_FI_DEV_GPU_TEMP"] is None, "no sensor, no made-up temperature"
        assert idle.job_id is None and idle.fields["DCGM_FI_DEV_GPU_UTIL"] == 0
    finally:
        with engine.begin() as conn:
            conn.execute(update(steps).where(steps.c.id == step_id).values(finished_at=func.now()))


def test_stream_clients_that_ask_for_gpus_receive_samples(database_url, nats_url, engine, make_account):
    admin = make_account("admin")
    job_id, step_id = _busy_step(engine, 0)
    settings = Settings(database_url=database_url, nats_url=nats_url)
    try:
        with TestClient(create_app(settings)) as client:
            with client.websocket_connect("/stream?gpus=true", headers=admin.headers) as ws:
                agent = client.portal.start_task_soon(
                    lambda: run_agent(simulated_devices(2), engine, nats_url, interval=0.2))
                try:
                    seen = {}
                    while len(seen) < 2:
                        message = next_message(ws, what="a sample of each simulated device")
                        if message["type"] == "gpu.metrics":
                            seen[message["device_uuid"]] = message
                finally:
                    agent.cancel()
        assert seen["SIM-GPU-0"]["job_id"] == str(job_id)
        assert seen["SIM-GPU-0"]["simulated"] is True
    finally:
        with engine.begin() as conn:
            conn.execute(update(steps).where(steps.c.id == step_id).values(finished_at=func.now()))

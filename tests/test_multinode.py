"""Several machines, tested on one: a real two-node Ray cluster (`ray.cluster_utils.Cluster` starts a
raylet per node, as Ray's own multi-node tests do), each node with its own simulated devices, and the
whole stack pointed at it with `RAY_ADDRESS`.

A parallel job's batches go to the devices of both nodes; then the worker node is killed (its raylet
and its device workers, no goodbye) while the job runs: the batches it had in hand run again on the
head node's devices, the job succeeds with every tile exactly once, and the dead node's devices show
as gone in `GET /gpus`. Serial jobs submitted after that run on the head node's devices, each in one run.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import create_engine, text

from constellation_ray.host import SIM_RESOURCE  # first: it keeps Ray on loopback, before Ray loads
from constellation_core.waiting import wait_for
from tests.e2e_stack import running_stack
from tests.samples import GENEVA
from tests.test_e2e import JOB_DEADLINE_S, _dump_logs, _result_counts, _wait_terminal, account_in

pytestmark = pytest.mark.e2e
DEVICES_PER_NODE = 2
HEAD_DEVICES = {f"SIM-GPU-{i}" for i in range(DEVICES_PER_NODE)}
# A dead raylet is declared dead after period × threshold (Ray's defaults take ~15 s).
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
                      "RAY_health_check_timeout_ms": "500",
                      # device workers at normal priority (Ray's default nice 15 starves them of CPU)
                      "RAY_worker_niceness": "0"}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    patch = pytest.MonkeyPatch()
    for name, value in FAST_HEALTH_CHECKS.items():
        patch.setenv(name, value)
    node = {"num_cpus": 1, "resources": {SIM_RESOURCE: DEVICES_PER_NODE}, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    worker = cluster.add_node(**node)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        cluster.shutdown()
        patch.undo()


@pytest.fixture(scope="module")
def stack(cluster, pg_admin_url, nats_url, migrated_template):
    ray_cluster, _ = cluster
    with running_stack(pg_admin_url, nats_url, migrated_template, simulated=DEVICES_PER_NODE,
                       env={"RAY_ADDRESS": ray_cluster.address}, serving=2 * DEVICES_PER_NODE) as running:
        yield running


def _done_batches(engine, job_id: str) -> list:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT device_uuid AS device, started_at, finished_at FROM tile_chunks "
                 "WHERE job_id = :id AND state = 'done' ORDER BY device_uuid, started_at"),
            {"id": job_id},
        ).all()


def test_a_parallel_job_spreads_over_both_nodes_and_survives_losing_one(cluster, stack):
    ray_cluster, worker_node = cluster
    account = account_in(stack["database_url"], "e2e-multinode")
    engine = create_engine(stack["database_url"])
    devices = {g["uuid"]: g for g in httpx.get(f"{stack['api']}/gpus", headers=account.headers).json()}
    worker_devices = set(devices) - HEAD_DEVICES
    assert len(worker_devices) == DEVICES_PER_NODE and all(devices[d]["state"] == "serving" for d in devices)
    assert len({devices[d]["host"] for d in worker_devices}) == 1
    assert {devices[d]["host"] for d in worker_devices} != {devices[d]["host"] for d in HEAD_DEVICES}

    response = httpx.post(f"{stack['api']}/jobs", headers=account.headers,
                          json={"name": "two nodes", "zoom": 18, "area": GENEVA, "mode": "parallel", "batch_size": 8})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    def worker_node_busy():
        return {b.device for b in _done_batches(engine, job_id)} & worker_devices

    wait_for(worker_node_busy, timeout=JOB_DEADLINE_S, what="a batch done on the worker node", interval=0.05)
    ray_cluster.remove_node(worker_node, allow_graceful=False)  # its raylet and device workers, killed

    job = _wait_terminal(stack, account, job_id)
    counts = _result_counts(engine, job_id)
    batches = _done_batches(engine, job_id)
    assert job["state"] == "succeeded", _dump_logs(stack)
    assert counts.results == counts.distinct_tiles == counts.planned == job["tiles_total"]
    used = {b.device for b in batches}
    assert used & worker_devices and used & HEAD_DEVICES, used  # both nodes' devices did some of it
    for earlier, later in zip(batches, batches[1:]):  # one batch at a time on each device
        if earlier.device == later.device:
            assert later.started_at >= earlier.finished_at, (earlier, later)

    def worker_devices_gone():
        listed = {g["uuid"]: g for g in httpx.get(f"{stack['api']}/gpus", headers=account.headers).json()}
        return all(listed[d]["state"] == "gone" and listed[d]["gone_at"] for d in worker_devices) and all(
            listed[d]["state"] == "serving" for d in HEAD_DEVICES)

    wait_for(worker_devices_gone, timeout=60, what="the dead node's devices to show as gone", interval=0.5)
    engine.dispose()


def test_serial_jobs_submitted_after_a_node_died_go_to_the_devices_that_serve(cluster, stack):
    ray_cluster, worker_node = cluster
    if worker_node in ray_cluster.worker_nodes:  # (this test run alone: lose the node here)
        ray_cluster.remove_node(worker_node, allow_graceful=False)
    account = account_in(stack["database_url"], "e2e-multinode-serial")
    engine = create_engine(stack["database_url"])

    def worker_devices_gone():
        listed = httpx.get(f"{stack['api']}/gpus", headers=account.headers).json()
        gone = {g["uuid"] for g in listed if g["state"] == "gone"}
        return len(gone) == DEVICES_PER_NODE and not gone & HEAD_DEVICES

    wait_for(worker_devices_gone, timeout=60, what="the dead node's devices to show as gone", interval=0.5)
    # More jobs than the head node has devices, at once: each runs on a device that serves, in one run.
    # (This stack's dispatcher knows the devices registered when it started: here the head node's. The
    # placement's skipping of gone devices is shown by tests/test_definitions.py.)
    job_ids = []
    for n in range(2 * DEVICES_PER_NODE):
        response = httpx.post(f"{stack['api']}/jobs", headers=account.headers,
                              json={"name": f"after the node died {n}", "zoom": 15, "area": GENEVA, "mode": "serial"})
        assert response.status_code == 201, response.text
        job_ids.append(response.json()["id"])
    for job_id in job_ids:
        assert _wait_terminal(stack, account, job_id, timeout=JOB_DEADLINE_S)["state"] == "succeeded", \
            _dump_logs(stack)
    with engine.connect() as conn:
        placed = conn.execute(text("SELECT j.device_uuid, count(r.id) FROM jobs j JOIN runs r ON r.job_id = j.id "
                                   "WHERE j.id = ANY(CAST(:ids AS uuid[])) GROUP BY j.id, j.device_uuid"),
                              {"ids": job_ids}).all()
        used = {row.device for row in conn.execute(text(
            "SELECT DISTINCT device_uuid AS device FROM tile_chunks WHERE job_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": job_ids})}
    assert {device for device, _ in placed} <= HEAD_DEVICES and used <= HEAD_DEVICES, (placed, used)
    assert all(runs == 1 for _, runs in placed), placed  # none placed on a dead device first, then moved
    engine.dispose()

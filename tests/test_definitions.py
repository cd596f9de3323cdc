"""The code location loads, and its dispatch sensor turns queued jobs into run requests once."""

from __future__ import annotations

import dagster as dg
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy import text as sql_text

from constellation_core.devices import simulated_devices
from constellation_core.tables import jobs
from constellation_dagster.definitions import defs
from constellation_dagster.inference.jobs import JOB_ID_TAG, build_jobs
from constellation_dagster.inference.sensors import dispatch_queued_jobs
from constellation_dagster.resources import SystemOfRecord


def test_definitions_load_with_one_pool_per_device():
    devices = simulated_devices(2)
    parallel, serial = build_jobs(devices)
    assert sorted(node.name for node in parallel.graph.nodes) == [
        "admit_on_sim0", "admit_on_sim1", "infer", "plan_tiles"]
    assert parallel.graph.node_named("admit_on_sim0").definition.pool == "device-sim0"
    assert parallel.graph.node_named("admit_on_sim1").definition.pool == "device-sim1"
    only_sim1 = serial[devices[1].uuid]
    assert sorted(node.name for node in only_sim1.graph.nodes) == ["admit_on_sim1", "infer", "plan_tiles"]
    # No step processes: every op runs in the run worker (pools are counted per run by the queue).
    assert parallel.executor_def.name == only_sim1.executor_def.name == "in_process"
    # The loaded location (devices of this host) builds and validates.
    assert defs.get_repository_def().has_job("tile_inference")
    assert defs.get_assets_def("landcover_model")


@pytest.fixture
def queued_job(engine, make_account):
    account = make_account()
    with engine.begin() as conn:
        job_id = conn.execute(
            insert(jobs)
            .values(name="sensor test", priority=7, state="queued", submitted_by=account.name,
                    account_id=account.id, zoom=12, correlation_id="corr-1",
                    aoi=func.ST_GeomFromText("POLYGON((6 46,6.1 46,6.1 46.1,6 46.1,6 46))", 4326))
            .returning(jobs.c.id)
        ).scalar_one()
    return job_id


def test_dispatch_sensor_requests_one_run_per_queued_job(engine, database_url, queued_job):
    resources = {"db": SystemOfRecord(database_url=database_url)}
    with dg.instance_for_test() as instance:
        result = dispatch_queued_jobs(dg.build_sensor_context(instance=instance, resources=resources))
        assert [r.run_key for r in result.run_requests] == [str(queued_job)]
        request = result.run_requests[0]
        assert request.tags[JOB_ID_TAG] == str(queued_job)
        assert request.tags["dagster/priority"] == "7"
        assert request.tags["constellation/correlation_id"] == "corr-1"
        assert request.run_config["ops"]["plan_tiles"]["config"]["job_id"] == str(queued_job)

        again = dispatch_queued_jobs(dg.build_sensor_context(instance=instance, resources=resources))
        assert again.run_requests == [], "a job already asked for is not asked for again at once"

    with engine.begin() as conn:
        conn.execute(sql_text("UPDATE jobs SET dispatched_at = now() - interval '10 minutes' WHERE id = :id"),
                     {"id": queued_job})
    with dg.instance_for_test() as instance:
        late = dispatch_queued_jobs(dg.build_sensor_context(instance=instance, resources=resources))
    assert [r.run_key for r in late.run_requests] == [str(queued_job)], "a stale request is repeated"
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.dispatched_at).where(jobs.c.id == queued_job)).scalar_one()


def test_dispatcher_hands_a_job_back_to_the_sensor_when_dagit_is_down(engine, queued_job):
    from constellation_core.waiting import free_port
    from constellation_dagster.dispatcher import dispatch_once, graphql_client

    unreachable = graphql_client(f"http://127.0.0.1:{free_port()}")
    with dg.instance_for_test() as instance:
        assert dispatch_once(engine, instance, unreachable) == (0, 1)
    with engine.connect() as conn:
        state, dispatched_at = conn.execute(
            select(jobs.c.state, jobs.c.dispatched_at).where(jobs.c.id == queued_job)).one()
    assert state == "queued" and dispatched_at is None, "the reconciler sensor will launch it on its next tick"


@dg.op
def _worker_dies():
    raise RuntimeError("run worker gone")


@dg.job
def _failing_job():
    _worker_dies()


def _job_after_failed_run(engine, database_url, nats_url, job_id, *, batches_done: bool) -> tuple[str, dict]:
    from constellation_core.tables import tile_chunks
    from constellation_dagster.inference.sensors import run_outcome_sensors
    from constellation_dagster.resources import EventBus

    with engine.begin() as conn:
        conn.execute(sql_text("UPDATE jobs SET state = 'running' WHERE id = :id"), {"id": job_id})
        conn.execute(insert(tile_chunks), [{"job_id": job_id, "chunk_no": n, "tiles": 32,
                                            "state": "done" if batches_done or n == 0 else "pending"}
                                           for n in range(2)])
    on_failure = next(s for s in run_outcome_sensors if s.name == "job_failed_on_run_failure")
    with dg.instance_for_test() as instance:
        result = _failing_job.execute_in_process(instance=instance, raise_on_error=False,
                                                 tags={JOB_ID_TAG: str(job_id)})
        context = dg.build_run_status_sensor_context(
            sensor_name=on_failure.name, dagster_event=result.get_run_failure_event(), dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"db": SystemOfRecord(database_url=database_url), "bus": EventBus(nats_url=nats_url)})
        on_failure(context)
    with engine.connect() as conn:
        state, error = conn.execute(select(jobs.c.state, jobs.c.error).where(jobs.c.id == job_id)).one()
        payload = conn.execute(sql_text("SELECT payload FROM events WHERE job_id = :id AND type = 'job.state' "
                                        "ORDER BY seq DESC LIMIT 1"), {"id": job_id}).scalar_one()
    return state, {"error": error, **payload}


def test_a_failed_run_fails_its_job_with_the_reason(engine, database_url, nats_url, queued_job):
    state, detail = _job_after_failed_run(engine, database_url, nats_url, queued_job, batches_done=False)
    assert state == "failed"
    assert "_worker_dies" in detail["error"], detail


def test_a_run_that_fails_after_its_last_batch_leaves_the_job_succeeded(engine, database_url, nats_url, queued_job):
    # e.g. its worker was killed while Dagster wrote the run's last events: nothing is left to retry.
    state, detail = _job_after_failed_run(engine, database_url, nats_url, queued_job, batches_done=True)
    assert state == "succeeded"
    assert "_worker_dies" in detail["run_failure"], detail

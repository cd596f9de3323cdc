"""The code location loads, and its dispatch sensor turns queued jobs into run requests once."""

from __future__ import annotations

import contextlib
import logging

import dagster as dg
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.exc import OperationalError

from constellation_core.devices import simulated_devices
from constellation_core.tables import jobs, tiles
from constellation_dagster.definitions import defs
from constellation_dagster.inference.dispatch import RECONCILE_GRACE_S
from constellation_dagster.inference.jobs import JOB_ID_TAG, build_jobs, serial_job_name
from constellation_dagster.inference.ops import plan_tiles
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


def _insert_job(engine, account, **values):
    """A queued job of `account` over a small square at zoom 12; `values` set or replace its columns."""
    with engine.begin() as conn:
        return conn.execute(insert(jobs).values(**{
            "name": "sensor test", "state": "queued", "submitted_by": account.name, "account_id": account.id,
            "zoom": 12, "aoi": func.ST_GeomFromText("POLYGON((6 46,6.1 46,6.1 46.1,6 46.1,6 46))", 4326), **values,
        }).returning(jobs.c.id)).scalar_one()


@pytest.fixture
def queued_job(engine, make_account):
    return _insert_job(engine, make_account(), priority=7, correlation_id="corr-1")


def test_dispatch_sensor_requests_one_run_per_queued_job(engine, database_url, queued_job):
    resources = {"db": SystemOfRecord(database_url=database_url)}
    with dg.instance_for_test() as instance:
        fresh = dispatch_queued_jobs(dg.build_sensor_context(instance=instance, resources=resources))
        assert fresh.run_requests == [], "a job just submitted is the dispatcher's (it asks in priority order)"
    with engine.begin() as conn:
        conn.execute(sql_text("UPDATE jobs SET created_at = now() - make_interval(secs => :s) WHERE id = :id"),
                     {"id": queued_job, "s": RECONCILE_GRACE_S + 1})
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


def _dispatch_over(monkeypatch, devices, *, measured_rates: bool = False) -> None:
    """The launch guard places jobs over `devices` (their jobs built as the code location builds them);
    every device counts as equally fast unless `measured_rates` (from `tile_chunks`, as in production)."""
    from constellation_dagster.inference import dispatch

    parallel, serial = build_jobs(devices)
    monkeypatch.setattr(dispatch, "DEVICES", devices)
    monkeypatch.setattr(dispatch, "ALL_JOBS", [parallel, *serial.values()])
    monkeypatch.setattr(dispatch, "tile_inference", parallel)
    if not measured_rates:
        monkeypatch.setattr(dispatch, "device_rates", lambda conn: {})


def _claimed_serial_job(engine, account, tiles: int):
    """A queued serial job as the launch guard hands it to `plan_launches` (asked for now)."""
    from types import SimpleNamespace

    job_id = _insert_job(engine, account, tiles_total=tiles, params={"mode": "serial"}, dispatched_at=func.now())
    return SimpleNamespace(id=job_id, priority=0, tiles_total=tiles, params={"mode": "serial"},
                           submitted_by=account.name, correlation_id=None, traceparent=None, created_at=None)


def _serial_job_placed_behind(engine, account, device, tiles_ahead: int):
    """A running serial job of `tiles_ahead` tiles on `device`, then a new 100-tile serial job placed
    (`plan_launches`): its launch, and the job as claimed (to place again)."""
    from constellation_dagster.inference import dispatch

    _insert_job(engine, account, state="running", tiles_total=tiles_ahead, tiles_done=0, params={"mode": "serial"},
                device_uuid=device.uuid)
    new = _claimed_serial_job(engine, account, tiles=100)
    with engine.begin() as conn:
        [launch] = dispatch.plan_launches(conn, [new])
    return launch, new


def test_a_serial_job_goes_to_the_device_with_the_least_work_ahead_of_it(engine, make_account, monkeypatch):
    """Not the device with the fewest jobs: one 3,000-tile job holds sim0 longer than three 100-tile
    jobs hold sim1. Work of a lower priority is not ahead (a device worker takes the highest-priority
    job's batches first), each choice counts for the next job claimed with it, and each is recorded
    on its job."""
    from types import SimpleNamespace

    from constellation_dagster.inference import dispatch

    devices = simulated_devices(2)
    _dispatch_over(monkeypatch, devices)
    account = make_account()

    def job(priority: int, tiles: int, **launched) -> SimpleNamespace:
        job_id = _insert_job(engine, account, name="placement", priority=priority, tiles_total=tiles,
                             params={"mode": "serial"}, **launched)
        return SimpleNamespace(id=job_id, priority=priority, tiles_total=tiles, params={"mode": "serial"},
                               submitted_by=account.name, correlation_id=None, traceparent=None, created_at=None)

    job(0, 3000, state="running", tiles_done=0, device_uuid=devices[0].uuid)
    for _ in range(3):
        job(5, 100, dispatched_at=func.now(), device_uuid=devices[1].uuid)  # runs asked for, still queued
    job(0, 10_000, device_uuid=devices[1].uuid)  # not launched (yet): not ahead of anything
    # as claimed: asked for now; `bulk` asked for again (its earlier run was bound to sim0)
    urgent, next_bulk = job(5, 200, dispatched_at=func.now()), job(0, 200, dispatched_at=func.now())
    bulk = job(0, 4000, dispatched_at=func.now(), device_uuid=devices[0].uuid)
    with engine.begin() as conn:
        launches = dispatch.plan_launches(conn, [urgent, bulk, next_bulk])
    assert [launch.job_name for launch in launches] == [
        "tile_inference_on_sim0",  # only the 300 tiles of priority 5 on sim1 are ahead of it
        "tile_inference_on_sim1",  # sim0: 3,000 + 200 tiles ahead; sim1: 300
        "tile_inference_on_sim0",  # sim0: 3,200; sim1: 300 + the 4,000 just placed there
    ]
    with engine.connect() as conn:
        bound = dict(conn.execute(select(jobs.c.id, jobs.c.device_uuid).where(
            jobs.c.id.in_([urgent.id, bulk.id, next_bulk.id]))).all())
    assert [bound[j.id] for j in (urgent, bulk, next_bulk)] == [devices[0].uuid, devices[1].uuid, devices[0].uuid]


def test_a_serial_job_goes_where_it_would_finish_first_at_each_devices_measured_rate(engine, make_account, monkeypatch):
    """A fleet's devices need not be equally fast (GPUs of different generations, a shared one): the
    rate each device ran its batches at over the last two minutes weighs the work ahead. Here the slow
    device has nothing ahead, and the fast one 600 tiles at eight times its rate: the new job finishes
    first on the fast one. A parallel job's tiles count on each device in proportion to its rate."""
    from uuid import uuid4

    from constellation_core.tables import tile_chunks
    from constellation_dagster.inference import dispatch

    slow, fast = devices = simulated_devices(2, node=uuid4().hex[:8])  # uuids of this test alone
    _dispatch_over(monkeypatch, devices, measured_rates=True)
    account = make_account()
    earlier = _insert_job(engine, account, state="succeeded", params={"mode": "parallel"})
    batches = [(slow, 32, 0.64, 5), (slow, 32, 0.64, 4), (fast, 32, 0.08, 3), (fast, 32, 0.08, 2),
               (slow, 32, 0.0032, 600)]  # (device, tiles, seconds on it, finished this long ago); the last too old
    with engine.begin() as conn:
        for chunk_no, (device, count, seconds, ago) in enumerate(batches):
            finished = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, ago)
            conn.execute(insert(tile_chunks).values(
                job_id=earlier, chunk_no=chunk_no, tiles=count, state="done", device_uuid=device.uuid,
                started_at=finished - func.make_interval(0, 0, 0, 0, 0, 0, seconds), finished_at=finished))
        rates = dispatch.device_rates(conn)
    assert rates[slow.uuid] == pytest.approx(50) and rates[fast.uuid] == pytest.approx(400)

    launch, new = _serial_job_placed_behind(engine, account, fast, tiles_ahead=600)
    assert launch.job_name == serial_job_name(fast), "slow: 100 tiles at 50/s = 2 s; fast: 700 at 400/s = 1.75 s"

    monkeypatch.setattr(dispatch, "device_rates", lambda conn: {slow.uuid: 100, fast.uuid: 300})
    _insert_job(engine, account, state="running", tiles_total=1200, tiles_done=0, params={"mode": "parallel"})
    with engine.begin() as conn:
        conn.execute(sql_text("UPDATE jobs SET tiles_total = 250 WHERE account_id = :a AND device_uuid = :d "
                              "AND state = 'running'"), {"a": account.id, "d": fast.uuid})
        [launch] = dispatch.plan_launches(conn, [new])
    # The parallel job's 1,200 tiles: 300 on slow, 900 on fast (3 s on each). Slow: 3 + 100/100 = 4 s;
    # fast: 3 + (250 + 100)/300 = 4.2 s. Split evenly, fast would have looked 3.2 s against 7 s.
    assert launch.job_name == serial_job_name(slow)


def test_a_serial_job_goes_to_no_device_marked_gone_while_another_serves(engine, make_account, monkeypatch):
    """After a node dies its devices have no work ahead: placed by work ahead alone, every new serial
    job went there and waited until its run gave up on the device. With every device gone, the job is
    still placed (a device may come back)."""
    from uuid import uuid4

    from constellation_core.tables import gpus
    from constellation_dagster.inference import dispatch

    dead, alive = devices = simulated_devices(2, node=uuid4().hex[:8])
    _dispatch_over(monkeypatch, devices)
    account = make_account()
    with engine.begin() as conn:
        for device in devices:
            conn.execute(insert(gpus).values(uuid=device.uuid, name=device.label, simulated=True,
                                             gone_at=func.now() if device is dead else None))
    launch, new = _serial_job_placed_behind(engine, account, alive, tiles_ahead=3000)
    assert launch.job_name == serial_job_name(alive), "3,000 tiles ahead on a serving device, not a dead one"

    with engine.begin() as conn:
        conn.execute(update(gpus).where(gpus.c.uuid == alive.uuid).values(gone_at=func.now()))
        [launch] = dispatch.plan_launches(conn, [new])
    assert launch.job_name == serial_job_name(dead), "every device gone: the least work ahead, as before"


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



def test_the_dispatcher_outlives_postgres_going_away_and_launches_once_it_is_back(
        engine, nats_url, queued_job, monkeypatch):
    """A claim whose COMMIT fails (Postgres killed under it) used to end the dispatcher's loop: its
    process died, and jobs waited for the reconciler sensor's grace (30 s in the chaos run)."""
    import asyncio
    import time

    from prometheus_client import CollectorRegistry

    from constellation_dagster import dispatcher

    real_dispatch_once, calls, launched = dispatcher.dispatch_once, [], []

    def postgres_away_once(*args):
        calls.append(len(calls))
        if len(calls) == 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return real_dispatch_once(*args)

    class Dagit:
        def submit_job_execution(self, job_name, **_):
            launched.append(job_name)
            return "a-run-id"

    async def run() -> BaseException | None:
        task = asyncio.create_task(dispatcher.run_dispatcher(engine, nats_url, "http://127.0.0.1:1"))
        deadline = time.monotonic() + 3 * dispatcher.RETRY_S + 5
        while not launched and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if task.done():
            return task.exception()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    with dg.instance_for_test() as instance:
        monkeypatch.setattr(dispatcher, "dispatch_once", postgres_away_once)
        monkeypatch.setattr(dispatcher, "graphql_client", lambda url: Dagit())
        monkeypatch.setattr(dispatcher.DagsterInstance, "get", staticmethod(lambda: instance))
        monkeypatch.setattr(dispatcher, "REGISTRY", CollectorRegistry())
        monkeypatch.setattr(dispatcher.tracing, "setup", lambda service: None)
        ended = asyncio.run(run())
    assert ended is None, f"the dispatcher's loop ended: {ended!r}"
    assert len(calls) == 2 and launched == ["tile_inference"]
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.dispatched_at).where(jobs.c.id == queued_job)).scalar_one() is not None

def test_an_op_waits_out_postgres_when_dagsters_own_storage_gives_up_connecting_to_it():
    """The admit op reads the model from Dagster's storage: during a Postgres restart that gives up with
    its own error (raised from the refused connection). It failed the op, and so the run."""
    from dagster_postgres.utils import DagsterPostgresException

    from constellation_dagster.inference.ops import through_outages

    def dagster_storage_gives_up():
        try:
            raise OperationalError("connect", {}, Exception("connection refused"))
        except OperationalError as exc:
            raise DagsterPostgresException("too many retries for DB connection") from exc

    with pytest.raises(dg.RetryRequested), through_outages():
        dagster_storage_gives_up()
    with pytest.raises(ValueError, match="not an outage"), through_outages():
        raise ValueError("not an outage")

@dg.op
def _worker_dies():
    raise RuntimeError("run worker gone")


@dg.job
def _failing_job():
    _worker_dies()


def _job_after_failed_run(engine, database_url, nats_url, job_id, *, batches_done: bool,
                          tags: dict[str, str] | None = None) -> tuple[str, dict]:
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
                                                 tags={JOB_ID_TAG: str(job_id), **(tags or {})})
        context = dg.build_run_status_sensor_context(
            sensor_name=on_failure.name, dagster_event=result.get_run_failure_event(), dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"db": SystemOfRecord(database_url=database_url), "bus": EventBus(nats_url=nats_url)})
        on_failure(context)
    with engine.connect() as conn:
        state, error = conn.execute(select(jobs.c.state, jobs.c.error).where(jobs.c.id == job_id)).one()
        payload = conn.execute(sql_text("SELECT payload FROM events WHERE job_id = :id AND type = 'job.state' "
                                        "ORDER BY seq DESC LIMIT 1"), {"id": job_id}).scalar() or {}
    return state, {"error": error, **payload}


def test_a_failed_run_fails_its_job_with_the_reason(engine, database_url, nats_url, queued_job):
    state, detail = _job_after_failed_run(engine, database_url, nats_url, queued_job, batches_done=False)
    assert state == "failed"
    # the op and its error, not Dagster's "Steps failed: [...]"
    assert "_worker_dies: RuntimeError: run worker gone" in detail["error"], detail


def test_a_run_that_fails_after_its_last_batch_leaves_the_job_succeeded(engine, database_url, nats_url, queued_job):
    # e.g. its worker was killed while Dagster wrote the run's last events: nothing is left to retry.
    state, detail = _job_after_failed_run(engine, database_url, nats_url, queued_job, batches_done=True)
    assert state == "succeeded"
    assert "_worker_dies" in detail["run_failure"], detail


def _run_worker_ends(engine, database_url, nats_url, job_id, *, retry_op_failures: bool) -> tuple[str, str | None]:
    """A run of the job fails in an op on an instance with Dagster's run retries on; then its run
    worker's last act (`end_job_of_ended_run`) — no sensor involved."""
    from constellation_dagster.inference.sensors import end_job_of_ended_run

    with engine.begin() as conn:
        conn.execute(sql_text("UPDATE jobs SET state = 'running' WHERE id = :id"), {"id": job_id})
    retries = {"run_retries": {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": retry_op_failures}}
    with dg.instance_for_test(overrides=retries) as instance:
        result = _failing_job.execute_in_process(instance=instance, raise_on_error=False,
                                                 tags={JOB_ID_TAG: str(job_id)})
        ended = end_job_of_ended_run(instance, result.dagster_run.run_id, database_url=database_url,
                                     nats_url=nats_url)
    with engine.connect() as conn:
        state, error = conn.execute(select(jobs.c.state, jobs.c.error).where(jobs.c.id == job_id)).one()
    assert ended == (state != "running")
    return state, error


def test_a_run_worker_fails_its_job_at_once_when_dagster_will_not_retry_the_run(
        engine, database_url, nats_url, queued_job):
    state, error = _run_worker_ends(engine, database_url, nats_url, queued_job, retry_op_failures=False)
    assert state == "failed"
    assert "_worker_dies: RuntimeError: run worker gone" in error


def test_a_run_worker_leaves_its_job_running_when_dagster_retries_the_run(engine, database_url, nats_url, queued_job):
    state, error = _run_worker_ends(engine, database_url, nats_url, queued_job, retry_op_failures=True)
    assert (state, error) == ("running", None)


@dg.op
def _work_done():
    return 1


@dg.job
def _succeeding_job():
    _work_done()


def _running_with_rows(engine, job_id, dagster_run_ids: list[str]) -> None:
    from constellation_core.tables import runs

    with engine.begin() as conn:
        conn.execute(sql_text("UPDATE jobs SET state = 'running', updated_at = now() - interval '5 minutes' "
                              "WHERE id = :id"), {"id": job_id})
        conn.execute(insert(runs), [{"job_id": job_id, "dagster_run_id": run_id, "state": "running"}
                                    for run_id in dagster_run_ids])


def _job_outcome(engine, job_id) -> tuple[str, list[str]]:
    from constellation_core.tables import runs

    with engine.connect() as conn:
        state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
        run_states = conn.execute(select(runs.c.state).where(runs.c.job_id == job_id)).scalars().all()
    return state, sorted(run_states)


def test_a_retry_that_recorded_a_run_row_of_its_own_succeeds_its_job(engine, database_url, nats_url, queued_job):
    """A run killed before Dagster recorded its first step re-runs `start_run` in its retry, which then
    has a `runs` row of its own next to its root's: the retry's success ends the job and both rows."""
    from constellation_dagster.inference.sensors import run_outcome_sensors
    from constellation_dagster.resources import EventBus

    on_success = next(s for s in run_outcome_sensors if s.name == "job_succeeded_on_run_success")
    with dg.instance_for_test() as instance:
        result = _succeeding_job.execute_in_process(instance=instance, tags={JOB_ID_TAG: str(queued_job)})
        root_run_id = "00000000-0000-0000-0000-0000000000aa"
        retry = result.dagster_run._replace(root_run_id=root_run_id, parent_run_id=root_run_id)
        _running_with_rows(engine, queued_job, [root_run_id, retry.run_id])
        on_success(dg.build_run_status_sensor_context(
            sensor_name=on_success.name, dagster_event=result.get_run_success_event(), dagster_instance=instance,
            dagster_run=retry,
            resources={"db": SystemOfRecord(database_url=database_url), "bus": EventBus(nats_url=nats_url)}))
    assert _job_outcome(engine, queued_job) == ("succeeded", ["succeeded", "succeeded"])


def _serial_job_of_one_device(database_url: str, nats_url: str) -> dg.JobDefinition:
    """The real serial tile-inference job of one simulated device, its resources bound (rebuilt by
    name for a re-execution)."""
    from constellation_dagster.resources import EventBus, GpuFleet

    (device,) = simulated_devices(1)
    _, serial = build_jobs([device])
    return dg.Definitions(jobs=list(serial.values()), resources={
        "db": SystemOfRecord(database_url=database_url), "bus": EventBus(nats_url=nats_url),
        "gpus": GpuFleet(simulated_gpus=1)}).get_job_def(serial[device.uuid].name)


def test_a_run_retried_from_its_failed_infer_op_follows_the_steps_its_root_run_opened(
        engine, database_url, nats_url, queued_job, monkeypatch, tmp_path):
    """Dagster retries a run whose worker died (a SIGKILL during `infer`) from its failure: the retry
    runs `infer` alone, without `plan_tiles` (which records the run's `runs` row) or the admit ops
    (which open its steps). It follows the job on the steps of the run it re-executes, and its success
    ends the job and that run's row."""
    from constellation_core.tables import runs, steps, tile_chunks
    from constellation_dagster.inference.sensors import end_job_of_ended_run
    from constellation_dagster.models.assets import MODEL_ASSET
    from constellation_dagster.resources import Followed, GpuFleet

    followed: list[list] = []

    def follow(self, db, job_id, admitted):  # the device worker's part: the first run's worker dies
        followed.append([step_id for step_id, _ in admitted])
        if len(followed) == 1:
            raise RuntimeError("run worker killed")
        with engine.begin() as conn:
            conn.execute(sql_text("UPDATE tile_chunks SET state = 'done', started_at = now(), finished_at = now() "
                                  "WHERE job_id = :id"), {"id": job_id})
        return Followed()

    monkeypatch.setattr(GpuFleet, "follow", follow)
    (tmp_path / "model.pt").write_bytes(b"weights")
    job = dg.build_reconstructable_job(__name__, _serial_job_of_one_device.__name__,
                                       reconstructable_kwargs={"database_url": database_url, "nats_url": nats_url})
    run_config = {"ops": {node.name: {"config": {"job_id": str(queued_job)}}
                          for node in _serial_job_of_one_device(database_url, nats_url).graph.nodes}}
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(MODEL_ASSET, metadata={
            "path": dg.MetadataValue.path(str(tmp_path / "model.pt")), "version": "test"}))
        with dg.execute_job(job, instance, run_config=run_config, tags={JOB_ID_TAG: str(queued_job)}) as first:
            assert not first.success
            root_run_id = first.run_id
        options = dg.ReexecutionOptions.from_failure(root_run_id, instance)
        # (Dagster's retry daemon gives a retry its parent's tags; `execute_job` does not)
        with dg.execute_job(job, instance, reexecution_options=options, tags={JOB_ID_TAG: str(queued_job)}) as retry:
            failures = [e.message for e in retry.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
            assert retry.success, failures
            assert [e.step_key for e in retry.all_events if e.event_type == dg.DagsterEventType.STEP_START] \
                == ["infer"], "the retry re-executes only the op that failed"
            retry_run_id = retry.run_id
        assert end_job_of_ended_run(instance, retry_run_id, database_url=database_url, nats_url=nats_url)
    with engine.connect() as conn:
        opened = conn.execute(select(steps.c.id).join(runs, runs.c.id == steps.c.run_id)
                              .where(runs.c.dagster_run_id == root_run_id)).scalars().all()
        run_rows = conn.execute(select(runs.c.dagster_run_id, runs.c.state, runs.c.metrics["tiles"].as_integer())
                                .where(runs.c.job_id == queued_job)).all()
        planned = conn.execute(select(func.sum(tile_chunks.c.tiles)).where(tile_chunks.c.job_id == queued_job)
                               ).scalar_one()
    assert followed == [opened, opened], "the retry follows the steps its root run opened"
    assert run_rows == [(root_run_id, "succeeded", planned)]
    assert _job_outcome(engine, queued_job)[0] == "succeeded"


def test_the_reconciler_ends_a_job_whose_run_ended_without_the_run_status_sensor(
        engine, database_url, nats_url, queued_job, monkeypatch):
    """A run-status sensor tick that failed is never evaluated again (Dagster moves its cursor on): the
    reconciler finds running jobs whose latest run has ended and ends them the same way."""
    from constellation_dagster.inference import sensors
    from constellation_dagster.resources import EventBus

    monkeypatch.setattr(sensors, "OUTCOME_GRACE_S", 0)
    resources = {"db": SystemOfRecord(database_url=database_url), "bus": EventBus(nats_url=nats_url)}
    with dg.instance_for_test() as instance:
        result = _succeeding_job.execute_in_process(instance=instance, tags={JOB_ID_TAG: str(queued_job)})
        _running_with_rows(engine, queued_job, [result.dagster_run.run_id])
        sensors.reconcile_run_outcomes(dg.build_sensor_context(instance=instance, resources=resources))
        assert _job_outcome(engine, queued_job) == ("succeeded", ["succeeded"])
        again = sensors.reconcile_run_outcomes(dg.build_sensor_context(instance=instance, resources=resources))
    assert again.skip_message == "no job has been running long", "an ended job is left alone"


def test_the_reconciler_runs_a_job_again_when_dagster_never_retried_its_failed_run(
        engine, database_url, nats_url, queued_job, monkeypatch):
    """Dagster's retry daemon moves past a failure it could not handle (Postgres away): the run says it
    will be retried and never is. The reconciler asks for a new run of the job (it carries on from the
    batches not done), once per failed run."""
    from constellation_dagster.inference import sensors
    from constellation_dagster.resources import EventBus

    monkeypatch.setattr(sensors, "OUTCOME_GRACE_S", 0)
    monkeypatch.setattr(sensors, "RETRY_GRACE_S", 0)  # (the dispatch guard's, as imported by the sensors)
    resources = {"db": SystemOfRecord(database_url=database_url), "bus": EventBus(nats_url=nats_url)}
    with dg.instance_for_test() as instance:
        result = _failing_job.execute_in_process(instance=instance, raise_on_error=False,
                                                 tags={JOB_ID_TAG: str(queued_job), "dagster/will_retry": "true"})
        _running_with_rows(engine, queued_job, [result.dagster_run.run_id])
        tick = sensors.reconcile_run_outcomes(dg.build_sensor_context(instance=instance, resources=resources))
        failed = instance.get_run_by_id(result.dagster_run.run_id)
        # The failed-run sensor coming to the failure late (its daemon was down) leaves the job running.
        late = sensors.apply_run_outcome(logging.getLogger("test"), resources["db"], resources["bus"], instance,
                                         failed, dg.DagsterRunStatus.FAILURE, "run worker gone")
    assert [r.run_key for r in tick.run_requests] == [f"{queued_job}/after/{result.dagster_run.run_id}"]
    # Dagster's retry daemon, should it come back to this failure now, leaves it alone (one live run).
    assert failed.tags["dagster/will_retry"] == "false" and failed.tags[sensors.RELAUNCHED_TAG] == "true"
    assert late is False
    request = tick.run_requests[0]
    assert request.tags[JOB_ID_TAG] == str(queued_job)
    assert request.run_config["ops"]["plan_tiles"]["config"]["job_id"] == str(queued_job)
    assert _job_outcome(engine, queued_job)[0] == "running", "the job carries on"


def test_the_reconciler_runs_a_job_again_when_dagsters_retry_could_not_be_created(
        engine, database_url, nats_url, queued_job, monkeypatch):
    """Dagster's retry daemon, failing to create a retry (Postgres restarting), notes "Failed to retry
    run" on the failed run and sets `dagster/will_retry` to false: the job is not over (seen in the
    chaos test), the reconciler runs it again; a run whose retry tag is missing (a failure written while
    Postgres restarted) is undecided, not failed."""
    from constellation_dagster.inference import sensors
    from constellation_dagster.resources import EventBus

    monkeypatch.setattr(sensors, "OUTCOME_GRACE_S", 0)
    monkeypatch.setattr(sensors, "RETRY_GRACE_S", 0)
    resources = {"db": SystemOfRecord(database_url=database_url), "bus": EventBus(nats_url=nats_url)}
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 2}}) as instance:
        result = _failing_job.execute_in_process(instance=instance, raise_on_error=False,
                                                 tags={JOB_ID_TAG: str(queued_job)})
        run_id = result.dagster_run.run_id
        instance.report_engine_event("Failed to retry run", instance.get_run_by_id(run_id))
        instance.add_run_tags(run_id, {"dagster/will_retry": "false"})
        _running_with_rows(engine, queued_job, [run_id])
        tick = sensors.reconcile_run_outcomes(dg.build_sensor_context(instance=instance, resources=resources))
        untagged = instance.get_run_by_id(run_id).with_tags({})  # as if the tag write was lost
    assert [r.run_key for r in tick.run_requests] == [f"{queued_job}/after/{run_id}"]
    assert _job_outcome(engine, queued_job)[0] == "running", "the job carries on"
    assert sensors.retry_pending(untagged, retries_enabled=True)
    assert not sensors.retry_pending(untagged, retries_enabled=False)


def test_a_queued_job_whose_failed_run_dagster_will_retry_is_not_launched_again(engine, database_url, queued_job):
    """The retry is created moments after the failure: a launch by the reconciling sensor meanwhile
    would run the job twice at once (seen in the chaos test)."""
    resources = {"db": SystemOfRecord(database_url=database_url)}
    with dg.instance_for_test() as instance:
        _failing_job.execute_in_process(instance=instance, raise_on_error=False,
                                        tags={JOB_ID_TAG: str(queued_job), "dagster/will_retry": "true"})
        result = dispatch_queued_jobs(dg.build_sensor_context(instance=instance, resources=resources))
    assert result.run_requests == []


# -- Postgres outages inside ops -------------------------------------------------------------------

_outages: list[Exception] = []


class _PostgresAwayAtFirst(SystemOfRecord):
    """The system of record, but the first `begin`s meet the errors queued in `_outages` (a refused
    connection is what an op meets while Postgres restarts)."""

    @contextlib.contextmanager
    def begin(self):
        if _outages:
            raise _outages.pop(0)
        with super().begin() as conn:
            yield conn


@dg.job
def _planning():
    plan_tiles()


def _plan_through(monkeypatch, database_url, nats_url, job_id, errors: list[Exception],
                  tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
    from constellation_dagster.inference import ops
    from constellation_dagster.resources import EventBus

    monkeypatch.setattr(ops, "OUTAGE_RETRY_WAIT_S", 0.1)
    _outages[:] = errors
    with dg.instance_for_test() as instance:
        return _planning.execute_in_process(
            instance=instance, raise_on_error=False, tags=tags,
            run_config={"ops": {"plan_tiles": {"config": {"job_id": str(job_id)}}}},
            resources={"db": _PostgresAwayAtFirst(database_url=database_url), "bus": EventBus(nats_url=nats_url)})


def _refused() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception('connection to server at "127.0.0.1" failed: Connection refused'))


def test_an_op_that_loses_postgres_runs_again_in_its_run_and_the_job_goes_on(
        engine, database_url, nats_url, queued_job, monkeypatch):
    result = _plan_through(monkeypatch, database_url, nats_url, queued_job, [_refused(), _refused()])
    assert result.success, result.get_run_failure_event()
    assert len(result.filter_events(lambda e: e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 2
    with engine.connect() as conn:
        state, planned = conn.execute(select(jobs.c.state, jobs.c.tiles_total).where(jobs.c.id == queued_job)).one()
        stored = conn.execute(select(func.count()).select_from(tiles).where(tiles.c.job_id == queued_job)).scalar_one()
    assert (state, planned) == ("running", stored)
    assert planned > 0


def test_planning_stores_each_tile_with_its_footprint_in_its_batch_once(
        engine, database_url, nats_url, queued_job, monkeypatch):
    """The plan op stores every tile of the area (its footprint exactly the tile's bounds) and the job's
    batches of `batch_size` tiles (the last one partial); planning again (an op run again) adds nothing."""
    import mercantile
    from shapely import wkt

    from constellation_core.tables import tile_chunks
    from constellation_core.tiles import plan_tiles as plan_tile_grid

    with engine.begin() as conn:
        conn.execute(sql_text("UPDATE jobs SET params = '{\"batch_size\": 4}' WHERE id = :id"), {"id": queued_job})
        area = conn.execute(select(func.ST_AsText(jobs.c.aoi)).where(jobs.c.id == queued_job)).scalar_one()
    expected = plan_tile_grid(wkt.loads(area), 12, 1000)
    assert len(expected) > 4 and len(expected) % 4, "the area needs more than a batch, the last one partial"
    for _ in range(2):
        assert _plan_through(monkeypatch, database_url, nats_url, queued_job, []).success
    with engine.connect() as conn:
        stored = conn.execute(select(tiles.c.z, tiles.c.x, tiles.c.y, tiles.c.chunk_no,
                                     func.ST_XMin(tiles.c.footprint), func.ST_YMin(tiles.c.footprint),
                                     func.ST_XMax(tiles.c.footprint), func.ST_YMax(tiles.c.footprint),
                                     func.ST_NPoints(tiles.c.footprint))
                              .where(tiles.c.job_id == queued_job).order_by(tiles.c.z, tiles.c.x, tiles.c.y)).all()
        batches = conn.execute(select(tile_chunks.c.chunk_no, tile_chunks.c.tiles, tile_chunks.c.state)
                               .where(tile_chunks.c.job_id == queued_job).order_by(tile_chunks.c.chunk_no)).all()
    assert [(z, x, y, n) for z, x, y, n, *_ in stored] == [(t.z, t.x, t.y, i // 4) for i, t in enumerate(expected)]
    for (z, x, y, _, *envelope, points) in stored:
        assert envelope == pytest.approx(list(mercantile.bounds(x, y, z)), abs=1e-12) and points == 5
    full, last = divmod(len(expected), 4)
    assert batches == [(n, 4, "pending") for n in range(full)] + [(full, last, "pending")]


def test_an_op_that_fails_for_another_reason_is_not_run_again(engine, database_url, nats_url, queued_job, monkeypatch):
    result = _plan_through(monkeypatch, database_url, nats_url, queued_job, [ValueError("a bug, not an outage")])
    assert not result.success
    assert not result.filter_events(lambda e: e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert "a bug, not an outage" in str(result.get_step_failure_events()[0].step_failure_data.error)


@pytest.fixture(scope="session")
def finished_spans():
    """Spans this process records (the SDK with an in-memory exporter as the global provider)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def test_a_retried_op_shows_its_failed_attempt_and_the_retry_in_the_jobs_trace(
        database_url, nats_url, queued_job, monkeypatch, finished_spans):
    from constellation_dagster.inference.ops import TRACEPARENT_TAG

    finished_spans.clear()
    submit = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # the submit request's span
    result = _plan_through(monkeypatch, database_url, nats_url, queued_job, [_refused()], {TRACEPARENT_TAG: submit})
    assert result.success
    plans = [s for s in finished_spans.get_finished_spans() if s.name == "plan tiles"]
    assert [(s.attributes["dagster.retry_number"], s.status.is_ok) for s in plans] == [(0, False), (1, True)]
    assert "Connection refused" in plans[0].events[0].attributes["exception.message"]
    assert {(s.context.trace_id, s.parent.span_id) for s in plans} == {(0x4bf92f3577b34da6a3ce929d0e0e4736,
                                                                         0x00f067aa0ba902b7)}
    (wait,) = [s for s in finished_spans.get_finished_spans() if s.name == "queue wait"]
    assert wait.context.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736, "the job's wait, once, in its trace"


def test_a_failed_run_dagster_retries_shows_as_a_failed_attempt_in_the_jobs_trace(
        engine, database_url, nats_url, queued_job, finished_spans):
    """A run that fails and that Dagster will retry leaves its job running; the job's trace gets the
    failed attempt (an error span with the run id and the reason), and the retry, which carries the
    run's tags, joins the same trace."""
    from constellation_dagster.inference.dispatch import WILL_RETRY_TAG
    from constellation_dagster.inference.ops import TRACEPARENT_TAG

    finished_spans.clear()
    submit = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    state, _ = _job_after_failed_run(engine, database_url, nats_url, queued_job, batches_done=False,
                                     tags={WILL_RETRY_TAG: "true", TRACEPARENT_TAG: submit})
    assert state == "running"
    (failed,) = [s for s in finished_spans.get_finished_spans() if s.name == "run failed"]
    assert not failed.status.is_ok and "_worker_dies" in failed.status.description
    assert failed.context.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736
    assert failed.attributes["constellation.job.id"] == str(queued_job) and failed.attributes["dagster.run_id"]


def test_a_job_whose_devices_are_gone_runs_again_on_a_device_that_serves(
        engine, database_url, nats_url, queued_job, monkeypatch, tmp_path):
    """A serial job bound to a device whose node then died: its run gives up on the device (after the
    gone grace) but does not fail the job while another device serves. The reconciler runs the job
    again on that device. A job whose devices keep dying fails on its third such run, with the reason."""
    from constellation_core.devices import device_spec
    from constellation_core.tables import gpus
    from constellation_dagster.inference import sensors
    from constellation_dagster.inference.ops import DEVICES_GONE_TAG
    from constellation_dagster.models.assets import MODEL_ASSET
    from constellation_dagster.resources import EventBus, Followed, GpuFleet

    gone_reason = "its devices are gone (their workers or machines stopped)"
    monkeypatch.setattr(GpuFleet, "follow", lambda self, db, job_id, admitted: Followed(
        stopped_because=gone_reason, devices_gone=True))
    dead, alive = simulated_devices(2)
    with engine.begin() as conn:
        conn.execute(sql_text("DELETE FROM gpus WHERE uuid IN (:a, :b)"), {"a": dead.uuid, "b": alive.uuid})
        conn.execute(update(jobs).where(jobs.c.id == queued_job).values(params={"mode": "serial"}))
        for device in (dead, alive):
            conn.execute(insert(gpus).values(uuid=device.uuid, name=device.label, simulated=True,
                                             spec=device_spec(device), gone_at=func.now() if device is dead else None))
    (tmp_path / "model.pt").write_bytes(b"weights")
    job = dg.build_reconstructable_job(__name__, _serial_job_of_one_device.__name__,
                                       reconstructable_kwargs={"database_url": database_url, "nats_url": nats_url})
    run_config = {"ops": {node.name: {"config": {"job_id": str(queued_job)}}
                          for node in _serial_job_of_one_device(database_url, nats_url).graph.nodes}}
    _dispatch_over(monkeypatch, [dead, alive])
    monkeypatch.setattr(sensors, "OUTCOME_GRACE_S", 0)
    resources = {"db": SystemOfRecord(database_url=database_url), "bus": EventBus(nats_url=nats_url)}

    def job_state() -> tuple[str, str | None]:
        with engine.connect() as conn:
            return conn.execute(select(jobs.c.state, jobs.c.error).where(jobs.c.id == queued_job)).one()

    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(MODEL_ASSET, metadata={
            "path": dg.MetadataValue.path(str(tmp_path / "model.pt")), "version": "test"}))
        for attempt in (1, 2):
            with dg.execute_job(job, instance, run_config=run_config,
                                tags={JOB_ID_TAG: str(queued_job), "attempt": str(attempt)}) as result:
                assert not result.success
                run = instance.get_run_by_id(result.run_id)
            assert run.tags.get(DEVICES_GONE_TAG) == "true"
            assert not sensors.end_job_of_ended_run(instance, run.run_id, database_url=database_url,
                                                    nats_url=nats_url)
            assert job_state() == ("running", None), "the job is not failed: another device serves"
            with engine.begin() as conn:
                conn.execute(sql_text("UPDATE jobs SET updated_at = now() - interval '1 minute' WHERE id = :id"),
                             {"id": queued_job})
            reconciled = sensors.reconcile_run_outcomes(dg.build_sensor_context(instance=instance,
                                                                                resources=resources))
            [request] = reconciled.run_requests
            assert request.job_name == serial_job_name(alive) and request.run_key == f"{queued_job}/after/{run.run_id}"
            assert instance.get_run_by_id(run.run_id).tags[sensors.RELAUNCHED_TAG] == "true"
        with engine.connect() as conn:
            logged = conn.execute(sql_text("SELECT payload->>'message' FROM events WHERE job_id = :id "
                                           "AND type = 'job.log' ORDER BY seq"), {"id": queued_job}).scalars().all()
        assert sum("the job will run again on a device that serves" in line for line in logged) == 2, logged

        with dg.execute_job(job, instance, run_config=run_config, tags={JOB_ID_TAG: str(queued_job)}) as result:
            run = instance.get_run_by_id(result.run_id)
        assert DEVICES_GONE_TAG not in run.tags, "moved twice already: the third time the job fails"
        assert sensors.end_job_of_ended_run(instance, run.run_id, database_url=database_url, nats_url=nats_url)
    state, error = job_state()
    assert state == "failed" and gone_reason in error, error

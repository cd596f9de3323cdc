"""A run worker forked while Postgres restarts waits for it, and starts its run again should Postgres
go away before the run has started, instead of dying (which left the run STARTING until Dagster's
120 s start timeout, and its job waiting: seen in the chaos test)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from dagster import DagsterRunStatus
from sqlalchemy.exc import OperationalError, ProgrammingError

from constellation_core.waiting import wait_for
from constellation_dagster import zygote


class RestartingStorage:
    """Stands in for a Dagster instance whose Postgres refuses the first `down` queries."""

    def __init__(self, down: int, error: Exception | None = None) -> None:
        self.down, self.asked = down, 0
        self.error = error or OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    status = DagsterRunStatus.STARTING

    def get_run_by_id(self, run_id: str) -> object:
        self.asked += 1
        if self.asked <= self.down:
            raise self.error
        return SimpleNamespace(status=self.status)


OUTAGE = OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))


def run_losing_postgres(times: int, storage: RestartingStorage):
    """The run's body: Postgres goes away under it `times` times (as the chaos test's kill did,
    just after the worker found it up), then it runs."""
    calls = []

    def execute() -> int:
        calls.append(1)
        if len(calls) <= times:
            storage.down = storage.asked + 2  # gone for the next two questions too
            raise OUTAGE
        return 0

    return execute, calls


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(zygote, "STORAGE_RETRY_S", 0.01)


def test_a_new_run_worker_waits_out_a_postgres_restart(capsys):
    storage = RestartingStorage(down=3)
    zygote._wait_for_run_storage(storage, "run-1")
    assert storage.asked == 4
    assert capsys.readouterr().err.count("run worker of run-1: Postgres did not answer (Exception)") == 3


def test_it_gives_up_after_its_deadline(monkeypatch):
    monkeypatch.setattr(zygote, "STORAGE_WAIT_S", 0.05)
    with pytest.raises(OperationalError):
        zygote._wait_for_run_storage(RestartingStorage(down=10_000), "run-1")


def test_errors_that_are_not_an_outage_are_not_waited_on():
    storage = RestartingStorage(down=1, error=ProgrammingError("SELECT", {}, Exception("no such table")))
    with pytest.raises(ProgrammingError):
        zygote._wait_for_run_storage(storage, "run-1")
    assert storage.asked == 1


def test_a_run_worker_whose_run_ended_as_postgres_restarts_ends_its_job_once_postgres_is_back(monkeypatch, capsys):
    """It gave up at once, and its job stayed `running` until the reconciler's grace ran out."""
    from constellation_dagster.inference import sensors

    asked = []

    def end_job(instance, run_id, *, database_url, nats_url) -> bool:
        asked.append(run_id)
        if len(asked) <= 3:
            raise OUTAGE
        return True

    monkeypatch.setattr(sensors, "end_job_of_ended_run", end_job)
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused")
    monkeypatch.setenv("NATS_URL", "nats://unused")
    zygote._end_job_of_ended_run(None, "run-1")
    assert asked == ["run-1"] * 4
    assert "could not end its job" not in capsys.readouterr().err

    monkeypatch.setattr(zygote, "JOB_END_WAIT_S", 0.05)  # Postgres stays away: the sensors end the job
    asked.clear()

    def postgres_away(instance, run_id, *, database_url, nats_url) -> bool:
        asked.append(run_id)
        raise OUTAGE

    monkeypatch.setattr(sensors, "end_job_of_ended_run", postgres_away)
    zygote._end_job_of_ended_run(None, "run-2")
    assert 1 < len(asked) < 50
    assert "run worker of run-2: could not end its job" in capsys.readouterr().err

def test_a_run_that_lost_postgres_before_starting_is_started_again(capsys):
    storage = RestartingStorage(down=0)
    execute, calls = run_losing_postgres(1, storage)
    assert zygote._start_through_outages(storage, "run-1", execute) == 0
    assert len(calls) == 2
    assert "run worker of run-1: lost Postgres before the run started (Exception); starting it again" in (
        capsys.readouterr().err)


def test_a_run_that_had_started_is_left_to_run_monitoring():
    storage = RestartingStorage(down=0)
    storage.status = DagsterRunStatus.STARTED
    execute, calls = run_losing_postgres(1, storage)
    with pytest.raises(OperationalError):
        zygote._start_through_outages(storage, "run-1", execute)
    assert len(calls) == 1


def test_a_run_is_started_a_bounded_number_of_times():
    storage = RestartingStorage(down=0)
    execute, calls = run_losing_postgres(100, storage)
    with pytest.raises(OperationalError):
        zygote._start_through_outages(storage, "run-1", execute)
    assert len(calls) == zygote.START_ATTEMPTS


def test_run_workers_inherit_the_code_locations_repository_and_jobs_built(monkeypatch):
    """The zygote builds the repository and its jobs before it forks: a run worker's lookup of its job
    (what `recon_job_from_origin(...).get_definition()` does) builds nothing again."""
    import os

    import dagster._core.definitions.definitions_class as definitions_class

    monkeypatch.setenv("CONSTELLATION_SIMULATED_GPUS", os.environ.get("CONSTELLATION_SIMULATED_GPUS", "2"))
    names = zygote.resolve_definitions(list(zygote.WARM_MODULES))
    assert "tile_inference" in names and "analytics_export" in names

    built = []
    original = definitions_class._create_repository_using_definitions_args
    monkeypatch.setattr(definitions_class, "_create_repository_using_definitions_args",
                        lambda *args, **kwargs: built.append(1) or original(*args, **kwargs))
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repository = ReconstructableRepository.for_module("constellation_dagster.definitions", "defs", os.getcwd())
    assert repository.get_reconstructable_job("tile_inference").get_definition().name == "tile_inference"
    assert built == []


@contextlib.contextmanager
def _launching_instance():
    """A Dagster instance with our run launcher and coordinator, whose zygote starts from this interpreter."""
    program = os.path.basename(sys.argv[0])
    overrides = {
        "run_launcher": {"module": "constellation_dagster.instance", "class": "WarmRunLauncher",
                         "config": {"start_in": [program]}},
        "run_coordinator": {"module": "constellation_dagster.instance", "class": "PromptQueuedRunCoordinator"},
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        yield instance


def test_the_launching_process_starts_its_zygote_as_it_asks_for_the_run_coordinator():
    """Dagster builds an instance's run launcher only for its first launch; the run queue asks for the
    coordinator as the daemon starts, and the coordinator builds the launcher then: the zygote is up
    before the first run (it took that run ~1.8 s longer otherwise)."""
    from constellation_dagster.instance import WarmRunLauncher

    with _launching_instance() as instance:
        instance.run_coordinator  # noqa: B018 - what the run queue daemon does as it starts
        launcher = instance._run_launcher  # noqa: SLF001 - built, not merely buildable on demand
        assert isinstance(launcher, WarmRunLauncher)
        zygote = wait_for(lambda: launcher._zygote, timeout=120, what="the zygote", interval=0.1)  # noqa: SLF001
        assert zygote.poll() is None
    zygote.wait(timeout=30)  # disposing the instance closes the zygote's stdin: it exits


def test_export_runs_find_their_libraries_loaded_in_the_zygote():
    """An export run's worker inherits pandas, pyarrow and DuckDB from the zygote, loaded once, instead
    of importing them for every export (about 0.5 s of CPU each)."""
    with _launching_instance() as instance:
        launcher = instance.run_launcher  # built here: it starts its zygote in a thread of its own
        zygote = wait_for(lambda: launcher._zygote, timeout=120, what="the zygote", interval=0.1)  # noqa: SLF001
        maps = Path(f"/proc/{zygote.pid}/maps").read_text()
        for library in ("/pandas/_libs/", "/pyarrow/libarrow.so", "/_duckdb."):
            assert library in maps, f"{library} is not loaded in the zygote"
    zygote.wait(timeout=30)


def test_a_run_worker_tags_its_run_with_itself_before_the_run_starts(monkeypatch):
    """Run monitoring fails a started run whose worker it cannot find; the launcher tags the run only
    after the zygote answers, so the worker tags it first: a run is never started untagged."""
    import dagster._cli.api as dagster_api

    from constellation_dagster.instance import WORKER_TAG, worker_identity

    monkeypatch.delenv("DATABASE_URL", raising=False)  # no job of ours to end afterwards
    tagged_at_start = []

    def run_starts(run_id, instance, *_args, **_kwargs) -> int:
        tagged_at_start.append(instance.get_run_by_id(run_id).tags.get(WORKER_TAG))
        return 0

    monkeypatch.setattr(dagster_api, "_execute_run_command_body", run_starts)

    @dg.op
    def nothing() -> None:
        pass

    @dg.job
    def a_job() -> None:
        nothing()

    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(a_job)
        code, _reusable = zygote.run_one({"run_id": run.run_id, "job_name": "a_job", "tags": {}}, instance)
    assert code == 0
    assert tagged_at_start == [worker_identity(os.getpid())]


@dg.op
def quick_op() -> None:
    pass


@dg.op
def long_op() -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until canceled
        time.sleep(0.05)


@dg.job
def quick() -> None:
    quick_op()


@dg.job
def long() -> None:
    long_op()


def _launch(instance, job) -> tuple[str, int]:
    """Launch a run of `job` (defined in this file) through the warm launcher; its id and worker's pid."""
    from dagster._core.launcher import LaunchRunContext

    from constellation_dagster.instance import WORKER_TAG

    run = instance.create_run_for_job(job, job_code_origin=dg.reconstructable(job).get_python_origin())
    instance.run_launcher.launch_run(LaunchRunContext(dagster_run=instance.get_run_by_id(run.run_id), workspace=None))
    return run.run_id, int(instance.get_run_by_id(run.run_id).tags[WORKER_TAG].split(":")[0])


def _ended(instance, run_id: str):
    return wait_for(lambda: (run := instance.get_run_by_id(run_id)).is_finished and run, timeout=60,
                    what=f"run {run_id} to end", interval=0.05)


def test_a_run_worker_runs_the_next_run_once_its_own_has_ended_and_a_cancel_reaches_only_its_run(monkeypatch):
    """A worker whose run succeeded runs the next one (no fork: it keeps its warmed pages, compiled
    statements and connections); a cancel meant for a run it no longer runs is dropped; a canceled
    run's worker is not reused."""
    import signal as signals

    monkeypatch.delenv("DATABASE_URL", raising=False)  # no job of ours to end afterwards
    with _launching_instance() as instance:
        first, worker = _launch(instance, quick)
        assert _ended(instance, first).status == DagsterRunStatus.SUCCESS
        wait_for(lambda: zygote.running_run(instance.root_directory, worker) is None, timeout=30,
                 what="the worker to be free", interval=0.05)
        os.kill(worker, signals.SIGINT)  # a late cancel of the run it has ended
        second, second_worker = _launch(instance, quick)
        assert second_worker == worker
        assert _ended(instance, second).status == DagsterRunStatus.SUCCESS

        long_run, long_worker = _launch(instance, long)
        assert long_worker == worker
        wait_for(lambda: instance.get_run_by_id(long_run).status == DagsterRunStatus.STARTED, timeout=30,
                 what="the long run to start", interval=0.05)
        assert instance.run_launcher.terminate(long_run)
        assert _ended(instance, long_run).status == DagsterRunStatus.CANCELED
        wait_for(lambda: not os.path.exists(f"/proc/{worker}"), timeout=30, what="the canceled run's worker to exit",
                 interval=0.05)
        third, third_worker = _launch(instance, quick)
        assert third_worker != worker
        assert _ended(instance, third).status == DagsterRunStatus.SUCCESS

"""The warm run-worker zygote: a process that has already imported Dagster and our code, and forks
one child per Dagster run.

A stock Dagster run worker is a fresh interpreter (`dagster api execute_run`) that imports Dagster and
loads the code location before its first op starts (the model and PyTorch live in the device workers,
`constellation_ray`, not in run workers). Forking from a process that has done all of that takes
milliseconds; the child then runs the run exactly as `dagster api execute_run` would
(`_execute_run_command_body`: run monitoring, engine events and SIGINT as the cancel signal all
behave the same).

Every op of our jobs runs in the run worker (the in-process executor): there are no step processes,
so no multiprocessing forkserver either.

Protocol (with `WarmRunLauncher`): one JSON line per run on stdin, `{"run_id", "job_name", "tags",
"instance_ref"}`; the zygote answers with one line, the child's pid. It exits when its stdin closes or its parent
changes (the launching process went away); runs already forked go on to their end. Nothing CUDA is
touched before a fork.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import importlib
import json
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

# What run workers find imported (the zygote preloads them).
WARM_MODULES = ("constellation_dagster.definitions",)

# What a run worker imports beyond the code location (Dagster's run-execution machinery, and the
# modules it imports on first use as a run goes: a sampled backlog saw each run worker spend ~5 % of
# its CPU importing these).
RUN_WORKER_MODULES = ("dagster._cli.api", "dagster._core.execution.api", "dagster._core.instance",
                      "dagster._utils.test.definitions", "dagster._core.workspace.autodiscovery",
                      "dagster._core.definitions.module_loaders.load_assets_from_modules",
                      "dagster._core.system_config.composite_descent", "dagster._core.execution.plan.active",
                      "dagster._core.executor.in_process")
# What the export runs import (`constellation_dagster.analytics.assets`, on first use so that the code
# server and the inference runs never load them): about 0.5 s of CPU in each export run worker, of the
# 1.2 s such a run took. pyarrow's allocator (jemalloc) starts a thread as it loads; its fork handlers
# reset it in each child (checked: 30 children forked at once wrote and read Parquet, GeoParquet and
# DuckDB with it loaded).
EXPORT_MODULES = ("pandas", "geopandas", "pyarrow.parquet", "pyarrow.compute", "pyarrow.dataset",
                  "constellation_core.analytics_db")

PARENT_CHECK_S = 1.0
# How long a run worker waits, as it ends, for NATS to take its last events and the trace store its
# last spans (each; both away when the whole stack has stopped).
EXIT_FLUSH_S = 3.0
# How long a new run worker waits for Postgres to answer (a restart) before giving its run up to Dagster's
# start timeout, and how often it asks.
STORAGE_WAIT_S = 90.0
STORAGE_RETRY_S = 1.0
# How long a run worker whose run has ended waits for Postgres to end its job (then the sensors do).
JOB_END_WAIT_S = 30.0
START_ATTEMPTS = 3  # times a run worker starts its run when Postgres goes away before it has started
# A run worker's garbage collector looks for cycles among its young objects once per this many new ones
# (Python's default: 700), and the older generations every 20 and 200 of those: a job followed for hours
# still has its cyclic garbage collected. With the instance frozen with the rest of what the children
# share, a run worker's CPU per run in P9 drains: 0.219 → 0.200 s (means of 4 drains each, thresholds
# (50,000, 50, 1,000)), and 0.215 → 0.201 s with these (one pair).
RUN_WORKER_GC_THRESHOLDS = (50_000, 20, 10)


def main(preload: list[str]) -> None:
    # Keep the protocol's pipes off fds 0/1: every run worker forked from here gets /dev/null for
    # stdin and our stderr for stdout.
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)

    for module in (*preload, *RUN_WORKER_MODULES, *EXPORT_MODULES):
        importlib.import_module(module)
    resolve_definitions(preload)
    from constellation_core import tracing

    tracing.preload()  # each run worker sets up its own exporter: its modules are imported already
    # Children are reaped by the kernel; a run worker's pid disappears from /proc when it exits.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # `kill -USR1` prints every thread's Python stack to stderr (the launching process's log), here
    # and in each run worker: what a stuck process is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    gc.freeze()  # what is imported stays shared with the children, untouched by their collector
    replies.write("ready\n")

    instances: dict[str, Any] = {}
    for line in _lines_while_parent_lives(requests):
        request = json.loads(line)
        instance = _instance(instances, request["instance_ref"])
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            os._exit(_run_in_child(request, instance))
        replies.write(f"{pid}\n")


def resolve_definitions(modules: list[str]) -> list[str]:
    """Build, once, what each run worker would build first from the code location it loads (the same
    module, already imported here): the `Definitions`' repository and every job in it (Dagster caches
    both on the objects a forked child inherits). Returns the jobs' names."""
    import dagster as dg

    names = []
    for name in modules:
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, dg.Definitions):
                repository = value.get_repository_def()
                names += [repository.get_job(job).name for job in repository.job_names]
    return names


def _lines_while_parent_lives(requests: BinaryIO) -> Iterator[str]:
    """The request lines, until stdin closes or the launching process is gone: its death closes our
    stdin, unless a process it forked still holds the pipe; a zygote never outlives its launcher."""
    parent, pending = os.getppid(), b""
    while os.getppid() == parent:
        ready, _, _ = select.select([requests], [], [], PARENT_CHECK_S)
        if not ready:
            continue
        chunk = os.read(requests.fileno(), 1 << 16)
        if not chunk:
            return
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (line.decode() for line in lines)


def _instance(instances: dict[str, Any], instance_ref_json: str) -> Any:
    """The Dagster instance of a ref, built once here (its storages check their tables on creation)
    and inherited by every child. Safe to share across fork: a child drops the pooled connections it
    inherited (`constellation_core.db.forget_in_forked_children`) and opens its own."""
    if instance_ref_json not in instances:
        from dagster._core.instance import DagsterInstance, InstanceRef
        from dagster._serdes import deserialize_value

        from constellation_core.db import sync_engine
        from constellation_dagster.storage import warm

        instance = DagsterInstance.from_ref(deserialize_value(instance_ref_json, InstanceRef))
        # Build the storages, meet Postgres (also with the ops' `SystemOfRecord` engine, the same
        # `DATABASE_URL`) and answer the schema checks, once.
        warm(instance, *([sync_engine(os.environ["DATABASE_URL"])] if os.environ.get("DATABASE_URL") else []))
        # What Dagster builds from the instance's config on first use (importing its class): every run
        # uses the compute log manager and the run coordinator.
        instance.compute_log_manager  # noqa: B018
        instance.run_coordinator  # noqa: B018
        instances[instance_ref_json] = instance
        gc.freeze()  # the instance, its storages and engines join what the children share untouched
    return instances[instance_ref_json]


def _run_in_child(request: dict, instance: Any) -> int:
    run_id = request["run_id"]
    gc.set_threshold(*RUN_WORKER_GC_THRESHOLDS)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 1
    started = time.monotonic()
    try:
        from dagster._cli.api import _execute_run_command_body
        from dagster._utils.interrupts import capture_interrupts

        def execute() -> int:
            _record_worker(instance, run_id)
            with _run_span(run_id, request.get("job_name"), request.get("tags") or {}):
                return _execute_run_command_body(run_id, instance, lambda _event: None,
                                                 set_exit_code_on_failure=False)

        with capture_interrupts(), instance:
            code = _start_through_outages(instance, run_id, execute)
            _end_job_of_ended_run(instance, run_id)
    except BaseException:  # noqa: BLE001 - the run's failure is already in Dagster's event log
        import traceback

        traceback.print_exc()
    finally:
        # `os._exit` skips atexit: send the run's last events and spans now.
        from constellation_core import tracing
        from constellation_core.bus import flush_publishers

        flush_publishers(EXIT_FLUSH_S)
        tracing.flush(EXIT_FLUSH_S)
        # What the run cost this process (its counters start at the fork): the figure to watch when
        # orchestration, not the device, sets the pace of a backlog (bench/p9_backlog_throughput.py).
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"run worker of {run_id} ({request.get('job_name')}) ended: exit code {code}, "
              f"{usage.ru_utime + usage.ru_stime:.3f} s of CPU in {time.monotonic() - started:.2f} s",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _record_worker(instance: Any, run_id: str) -> None:
    """Tag the run with this worker before the run starts. The launcher tags it too, but only once the
    zygote has answered with the child's pid, by which time the child may have started the run: run
    monitoring that found a started run with no worker tag failed it while its worker ran on, and the
    retry ran beside it (a daemon killed between the fork and its tag left the run so for good). The
    launcher's tag stays: it lets a cancel reach this worker while it waits for Postgres, before this."""
    from constellation_dagster.instance import WORKER_TAG, worker_identity

    instance.add_run_tags(run_id, {WORKER_TAG: worker_identity(os.getpid())})


def _end_job_of_ended_run(instance: Any, run_id: str) -> None:
    """Show the run's outcome on its job at once when it is final (the run-status sensors would take up
    to their interval). Should Postgres be restarting, ask again until it answers, for up to
    `JOB_END_WAIT_S`: a worker that gave up at once left its job `running` until a sensor's tick missed
    it and the reconciler's 30 s grace ran out (seen in the chaos test). Ending a job twice does nothing."""
    if not (os.environ.get("DATABASE_URL") and os.environ.get("NATS_URL")):
        return
    from constellation_core.db import through_restarts
    from constellation_dagster.inference.sensors import end_job_of_ended_run

    try:
        through_restarts(
            lambda: end_job_of_ended_run(instance, run_id, database_url=os.environ["DATABASE_URL"],
                                         nats_url=os.environ["NATS_URL"]),
            wait_s=JOB_END_WAIT_S, every_s=STORAGE_RETRY_S, on_retry=_waiting(run_id, " as it ended its job"))
    except Exception as exc:  # noqa: BLE001 - the run-status sensor ends the job instead
        print(f"run worker of {run_id}: could not end its job ({type(exc).__name__}: {exc}); the run-status "
              "sensor will", file=sys.stderr, flush=True)


def _start_through_outages(instance: Any, run_id: str, execute: Callable[[], int]) -> int:
    """Run `execute` (the run) once Postgres answers; should Postgres go away before the run has
    started (its status still STARTING: nothing of it ran), run it again once Postgres is back rather
    than leave it to Dagster's start timeout. A run that had started is left to run monitoring (its
    worker is gone: the run fails and Dagster retries it)."""
    from dagster import DagsterRunStatus

    from constellation_core.db import OUTAGE_ERRORS

    _wait_for_run_storage(instance, run_id)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return execute()
        except OUTAGE_ERRORS as exc:
            if attempt == START_ATTEMPTS:
                raise
            run = _wait_for_run_storage(instance, run_id)
            if run is None or run.status not in (DagsterRunStatus.STARTING, DagsterRunStatus.NOT_STARTED):
                raise
            print(f"run worker of {run_id}: lost Postgres before the run started "
                  f"({type(exc.orig or exc).__name__}); starting it again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _wait_for_run_storage(instance: Any, run_id: str) -> Any:
    """Wait until Postgres answers for the run before running it. A worker forked while Postgres
    restarts would otherwise die on its first query, before its run has started; nothing then ends the
    run but Dagster's start timeout (`run_monitoring.start_timeout_seconds`, 120 s), and its job waits
    that long (seen in the chaos test). The ops ride out a lost Postgres the same way
    (`OUTAGE_RETRIES`). Returns the run as Postgres then has it."""
    from constellation_core.db import through_restarts

    return through_restarts(
        lambda: instance.get_run_by_id(run_id), wait_s=STORAGE_WAIT_S, every_s=STORAGE_RETRY_S,
        on_retry=_waiting(run_id))


def _waiting(run_id: str, doing: str = "") -> Callable[[BaseException], None]:
    """What a run worker says each time it waits for Postgres."""
    def say(exc: BaseException) -> None:
        print(f"run worker of {run_id}: Postgres did not answer{doing} ({type(exc.orig or exc).__name__}); "
              f"trying again in {STORAGE_RETRY_S:.0f} s", file=sys.stderr, flush=True)
    return say


def _run_span(run_id: str, job_name: str | None, tags: dict[str, str]) -> contextlib.AbstractContextManager:
    """The run's span in its job's trace (the ops' spans are its children), when tracing is on; the
    launcher sent the run's tags with the request (no query here). Set up after the fork: the zygote
    itself never starts the exporter's thread."""
    from constellation_core import tracing
    from constellation_dagster.inference.jobs import JOB_ID_TAG
    from constellation_dagster.inference.ops import TRACEPARENT_TAG

    if not tracing.setup("constellation-run-worker"):
        return contextlib.nullcontext()
    return tracing.span_of_job(f"run {job_name}", tags.get(TRACEPARENT_TAG), job_id=tags.get(JOB_ID_TAG),
                               attributes={"dagster.run_id": run_id, "dagster.job": job_name,
                                           "dagster.parent_run_id": tags.get("dagster/parent_run_id"),
                                           "process.pid": os.getpid()})


if __name__ == "__main__":
    main(sys.argv[1:] or list(WARM_MODULES))

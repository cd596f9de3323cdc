"""The warm run-worker zygote: a process that has already imported Dagster and our code, and forks
the run workers that run Dagster runs (each serves several, one after another: see below).

A stock Dagster run worker is a fresh interpreter (`dagster api execute_run`) that imports Dagster and
loads the code location before its first op starts (the model and PyTorch live in the device workers,
`constellation_ray`, not in run workers). Forking from a process that has done all of that takes
milliseconds; the child then runs the run exactly as `dagster api execute_run` would
(`_execute_run_command_body`: run monitoring, engine events and SIGINT as the cancel signal all
behave the same).

Every op of our jobs runs in the run worker (the in-process executor): there are no step processes,
so no multiprocessing forkserver either.

A run worker serves several runs, one after another (`RUNS_PER_WORKER`): once its run has ended it
tells the zygote it is free, and the zygote hands it the next run instead of forking a new worker. A
worker that has run once keeps what a fresh fork pays for again on every run: the pages its run
touched (a fork's copy-on-write faults), SQLAlchemy's compiled statements and its pooled
connections. A worker whose run was canceled, did not end, or raised is not reused: it exits, as
every worker did before. A worker free for `WORKER_IDLE_S` is let go (the zygote closes its pipe).

Protocol (with `WarmRunLauncher`): one JSON line per run on stdin, `{"run_id", "job_name", "tags",
"instance_ref"}`; the zygote answers with one line, the pid of the worker that runs it and how it
got it (`<pid> forked` or `<pid> free`). It exits when its stdin closes or its parent changes (the
launching process went away); its workers finish the run they have and exit. Nothing CUDA is touched before a fork.

Each worker names the run it is running in `<DAGSTER_HOME>/storage/run_workers/<pid>`
(`current_run_file`), so that a cancel (SIGINT to the worker, as stock Dagster's) reaches only the
run it was meant for.
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
# How many runs one run worker serves, one after another (1: a fresh fork for every run), and how
# long a free worker waits for its next run before it is let go.
# (`WarmRunLauncher` sets them from its config, in the zygote's environment.)
RUNS_PER_WORKER_ENV, WORKER_IDLE_ENV = "CONSTELLATION_RUNS_PER_WORKER", "CONSTELLATION_RUN_WORKER_IDLE_S"
RUNS_PER_WORKER = int(os.environ.get(RUNS_PER_WORKER_ENV, "50"))
WORKER_IDLE_S = float(os.environ.get(WORKER_IDLE_ENV, "60"))
FREE = b"free\n"  # what a worker writes to the zygote when it can take another run


class _Worker:
    """The zygote's side of one run worker: the pipe it sends runs on, the pipe the worker says
    it is free on, and since when it has been free (None: running a run)."""

    def __init__(self, pid: int, instance_key: str, runs_fd: int, free_fd: int) -> None:
        self.pid, self.instance_key, self.runs_fd, self.free_fd = pid, instance_key, runs_fd, free_fd
        self.free_since: float | None = None

    def let_go(self) -> None:
        """Close the pipe it waits on for runs: a free worker reads its end and exits."""
        if self.runs_fd >= 0:
            os.close(self.runs_fd)
            self.runs_fd = -1
        self.free_since = None


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
    workers: dict[int, _Worker] = {}  # by the fd the worker says it is free on

    def in_child() -> None:  # what a forked worker must not hold: the protocol, the other workers' pipes
        requests.close()
        replies.close()
        for other in workers.values():
            other.let_go()
            os.close(other.free_fd)

    for line in _lines_while_parent_lives(requests, workers):
        request = json.loads(line)
        key = request["instance_ref"]
        instance = _instance(instances, key)
        pid = _hand_to_free_worker(workers, key, line, instance.root_directory, request["run_id"])
        if pid is not None:
            replies.write(f"{pid} free\n")
        else:
            replies.write(f"{_fork_worker(workers, request, key, instance, in_child)} forked\n")
    for worker in workers.values():  # free workers exit; busy ones when their run ends
        worker.let_go()


def _hand_to_free_worker(workers: dict[int, _Worker], key: str, line: str, root_directory: str,
                         run_id: str) -> int | None:
    """Send the run to the worker that became free last (the warmest); its pid, or None when no
    worker of this instance is free."""
    free = sorted((w for w in workers.values() if w.free_since is not None and w.instance_key == key),
                  key=lambda w: w.free_since, reverse=True)
    for worker in free:
        worker.free_since = None
        _name_run(root_directory, worker.pid, run_id)  # before anyone learns the pid
        try:
            os.write(worker.runs_fd, (line + "\n").encode())  # a line is far below a pipe's atomic size
            return worker.pid
        except OSError:  # it exited since it said it was free
            worker.let_go()
    return None


def _fork_worker(workers: dict[int, _Worker], request: dict, key: str, instance: Any,
                 in_child: Callable[[], None]) -> int:
    runs_read, runs_write = os.pipe()
    free_read, free_write = os.pipe()
    # A cancel cannot reach the child before it has its handler (`_serve` unblocks it).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    pid = os.fork()
    if pid == 0:
        in_child()
        os.close(runs_write)
        os.close(free_read)
        os._exit(_serve(request, instance, runs_read, free_write))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    os.close(runs_read)
    os.close(free_write)
    workers[free_read] = _Worker(pid, key, runs_write, free_read)
    _name_run(instance.root_directory, pid, request["run_id"])  # before anyone learns the pid
    return pid


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


def _lines_while_parent_lives(requests: BinaryIO, workers: dict[int, _Worker]) -> Iterator[str]:
    """The request lines, until stdin closes or the launching process is gone: its death closes our
    stdin, unless a process it forked still holds the pipe; a zygote never outlives its launcher.
    Meanwhile, note the workers that say they are free, forget those that exited, and let go of those
    free for longer than `WORKER_IDLE_S`."""
    parent, pending = os.getppid(), b""
    while os.getppid() == parent:
        ready, _, _ = select.select([requests, *workers], [], [], PARENT_CHECK_S)
        now = time.monotonic()
        for fd in ready:
            if fd is requests:
                continue
            worker = workers[fd]
            said = os.read(fd, 1 << 12)
            if not said:  # it exited (its run ended or it was killed)
                worker.let_go()
                os.close(fd)
                del workers[fd]
            elif worker.runs_fd >= 0:
                worker.free_since = now
        for worker in workers.values():
            if worker.free_since is not None and now - worker.free_since > WORKER_IDLE_S:
                worker.let_go()
        if requests not in ready:
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
        _forget_names_of_dead_workers(instance.root_directory)
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


def current_run_file(root_directory: str, pid: int) -> str:
    """Where run worker `pid` names the run it is running (absent while it has none)."""
    return os.path.join(root_directory, "storage", "run_workers", str(pid))


def running_run(root_directory: str, pid: int) -> str | None:
    """The run worker `pid` is running now, as it says (None when it says none)."""
    try:
        with open(current_run_file(root_directory, pid)) as named:
            return named.read().strip() or None
    except OSError:
        return None


def _name_run(root_directory: str, pid: int, run_id: str | None) -> None:
    path = current_run_file(root_directory, pid)
    if run_id is None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.new", "w") as named:
        named.write(run_id)
    os.replace(f"{path}.new", path)  # a reader never sees half a run id


def _forget_names_of_dead_workers(root_directory: str) -> None:
    """Remove what killed workers (SIGKILL skips their clean-up) left in `run_workers/`."""
    folder = os.path.dirname(current_run_file(root_directory, 0))
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if name.isdigit() and not os.path.exists(f"/proc/{name}"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


# Runs a worker was asked to cancel before they started in it (see `_serve`).
_early_cancels: set[str] = set()


def _serve(request: dict, instance: Any, runs_fd: int, free_fd: int) -> int:
    """A run worker's life: run the request, then, while its runs can be trusted to have left it
    clean, say it is free and run the next one the zygote hands it. Returns the exit code of its
    last run."""
    root, pid = instance.root_directory, os.getpid()

    def between_runs(_signum: int, _frame: Any) -> None:
        # A cancel (SIGINT) outside a run's execution: for the run the zygote has just named here, it
        # is kept and delivered once that run's execution has begun; any other is stale: dropped.
        if named := running_run(root, pid):
            _early_cancels.add(named)

    signal.signal(signal.SIGINT, between_runs)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the zygote across the fork
    gc.set_threshold(*RUN_WORKER_GC_THRESHOLDS)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    served, code = 0, 1
    runs = os.fdopen(runs_fd, "rb", buffering=0)
    try:
        while True:
            code, reusable = run_one(request, instance)
            served += 1
            _name_run(root, pid, None)
            if not reusable or served >= RUNS_PER_WORKER:
                return code
            try:
                os.write(free_fd, FREE)
                line = runs.readline()
            except OSError:  # the zygote is gone
                return code
            if not line:  # let go: free too long, or the zygote exited
                return code
            request = json.loads(line)
    finally:
        _name_run(root, pid, None)


def run_one(request: dict, instance: Any) -> tuple[int, bool]:
    """Run the requested run in this worker. Returns its exit code, and whether this worker may run
    another: only when its run has ended (succeeded or failed) and nothing interrupted it."""
    run_id = request["run_id"]
    code, reusable = 1, False
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        from dagster._cli.api import _execute_run_command_body
        from dagster._utils.interrupts import capture_interrupts, check_captured_interrupt

        def execute() -> int:
            _record_worker(instance, run_id)
            with _run_span(run_id, request.get("job_name"), request.get("tags") or {}):
                return _execute_run_command_body(run_id, instance, lambda _event: None,
                                                 set_exit_code_on_failure=False)

        with capture_interrupts():
            if run_id in _early_cancels:  # canceled before it began here: Dagster's handler takes it now
                signal.raise_signal(signal.SIGINT)
            code = _start_through_outages(instance, run_id, execute)
            interrupted = check_captured_interrupt()
        # Leaving, Dagster pointed SIGTERM at the handler it restored for SIGINT (ours, between runs):
        # a worker between runs ends on SIGTERM, as any process.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _end_job_of_ended_run(instance, run_id)
        reusable = not interrupted and _ended_cleanly(instance, run_id)
    except BaseException:  # noqa: BLE001 - the run's failure is already in Dagster's event log
        import traceback

        traceback.print_exc()
    finally:
        _early_cancels.discard(run_id)
        # A worker that is not reused ends with `os._exit`, which skips atexit: send the run's last
        # events and spans now.
        from constellation_core import tracing
        from constellation_core.bus import flush_publishers

        flush_publishers(EXIT_FLUSH_S)
        tracing.flush(EXIT_FLUSH_S)
        # What the run cost this process: the figure to watch when orchestration, not the device,
        # sets the pace of a backlog (bench/p9_backlog_throughput.py).
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
        print(f"run worker of {run_id} ({request.get('job_name')}) ended: exit code {code}, "
              f"{cpu:.3f} s of CPU in {time.monotonic() - started:.2f} s", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    return code, reusable


def _ended_cleanly(instance: Any, run_id: str) -> bool:
    """Whether the run has ended as runs do (succeeded or failed, not canceled): only then is what it
    leaves in this process what any run leaves."""
    from dagster import DagsterRunStatus

    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)


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

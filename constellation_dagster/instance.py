"""Plug-ins of the Dagster instance (named in `infra/dagster/dagster.yaml`).

- `WarmRunLauncher` hands each run to a worker forked from a warm zygote (`constellation_dagster.zygote`),
  or to one such worker that is free again after its last run, instead of starting a fresh
  `dagster api execute_run` interpreter: the run's first op starts in tens of
  milliseconds rather than 3–5 s. Cancel is SIGINT to the worker, as stock Dagster's; run monitoring
  asks the launcher whether the worker is alive, so a killed worker fails its run and frees its slots.
- `PromptQueuedRunCoordinator` is Dagster's queued run coordinator with a sub-second dequeue interval
  (stock config takes whole seconds: 1 s, an average 0.5 s wait per run; 0 spins a core).

This module is imported by every Dagster process that loads the instance: keep it light (no torch).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from dagster import Field, Float
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

WORKER_TAG = "constellation/run_worker"  # "<pid>:<start time in clock ticks>", the worker's identity
ZYGOTE_START_TIMEOUT_S = 120.0


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(self, preload_modules: list[str] | None = None, start_in: list[str] | None = None,
                 runs_per_worker: int | None = None, worker_idle_seconds: float | None = None,
                 inst_data: ConfigurableClassData | None = None) -> None:
        from constellation_dagster.zygote import RUNS_PER_WORKER_ENV, WARM_MODULES, WORKER_IDLE_ENV

        self._inst_data = inst_data
        self._preload = list(preload_modules or WARM_MODULES)
        self._zygote_settings = {name: str(value) for name, value in
                                 ((RUNS_PER_WORKER_ENV, runs_per_worker), (WORKER_IDLE_ENV, worker_idle_seconds))
                                 if value is not None}
        self._lock = threading.Lock()
        self._zygote: subprocess.Popen | None = None
        super().__init__()
        # The process that launches runs (the daemon, for the queued coordinator) warms its zygote as
        # it starts, so the first run is as fast as the next.
        if os.path.basename(sys.argv[0]) in (start_in or ["dagster-daemon"]):
            threading.Thread(target=self._warm, name="zygote-warm-up", daemon=True).start()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {
            "preload_modules": Field([str], is_required=False,
                                     description="Modules the zygote imports before it forks run workers."),
            "start_in": Field([str], is_required=False,
                              description="Programs that start their zygote at once (default: dagster-daemon)."),
            "runs_per_worker": Field(int, is_required=False,
                                     description="Runs one run worker serves, one after another (default 50; "
                                                 "1: a fresh fork for every run)."),
            "worker_idle_seconds": Field(Float, is_required=False,
                                         description="How long a free run worker waits for its next run "
                                                     "before it exits (default 60)."),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    # -- launching ------------------------------------------------------------------------------

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        request = json.dumps({"run_id": run.run_id, "job_name": run.job_name, "tags": dict(run.tags),
                              "instance_ref": serialize_value(self._instance.get_ref())})
        with self._lock:
            pid, how = self._fork(request)
        self._instance.add_run_tags(run.run_id, {WORKER_TAG: worker_identity(pid)})
        self._instance.report_engine_event(
            f"Run worker forked from the warm zygote (pid {pid})." if how == "forked"
            else f"Run handed to a free run worker that has run runs before (pid {pid}).",
            run, cls=self.__class__,
        )

    def _warm(self) -> None:
        try:
            with self._lock:
                self._ensure_zygote()
        except Exception as exc:  # noqa: BLE001 - a failed warm-up is retried by the first launch
            print(f"zygote warm-up failed: {exc!r}", file=sys.stderr)

    def _ensure_zygote(self) -> subprocess.Popen:
        if self._zygote is not None and self._zygote.poll() is None:
            return self._zygote
        zygote = subprocess.Popen(
            [sys.executable, "-m", "constellation_dagster.zygote", *self._preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, **self._zygote_settings},
        )
        if _read_line(zygote, ZYGOTE_START_TIMEOUT_S) != "ready":
            zygote.kill()
            raise RuntimeError("the run-worker zygote did not start")
        self._zygote = zygote
        return zygote

    def _fork(self, request: str) -> tuple[int, str]:
        """Hand the run to the zygote: the pid of its worker, and "forked" or "free" (see the zygote)."""
        for attempt in (1, 2):  # a zygote that died since the last run is replaced once
            zygote = self._ensure_zygote()
            try:
                zygote.stdin.write(request + "\n")
                zygote.stdin.flush()
                pid, _, how = _read_line(zygote, 30.0).partition(" ")
                return int(pid), how
            except (BrokenPipeError, ValueError):
                zygote.kill()
                self._zygote = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- cancel and health ----------------------------------------------------------------------

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = _live_worker(run, self._instance.root_directory)
        if pid is None:
            self._instance.report_engine_event("No live run worker to send the cancel to.", run, cls=self.__class__)
            return False
        # What `dagster api execute_run` treats as the cancel request. The worker runs this run (it
        # names it: see `zygote.current_run_file`), and runs no other before its execution has ended.
        os.kill(pid, signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if WORKER_TAG not in run.tags:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "run worker not recorded yet", transient=True)
        if _live_worker(run, self._instance.root_directory) is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=run.tags[WORKER_TAG])
        latest = self._instance.get_run_by_id(run.run_id)
        if latest is not None and latest.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS, run_worker_id=run.tags[WORKER_TAG])
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker {run.tags[WORKER_TAG]} is gone",
                                    run_worker_id=run.tags[WORKER_TAG])

    def dispose(self) -> None:
        if self._zygote is not None and self._zygote.poll() is None:
            self._zygote.stdin.close()  # the zygote exits; runs it forked carry on
            self._zygote = None


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no answer from the run-worker zygote within {timeout:.0f} s")
    line = process.stdout.readline()
    if not line:
        raise BrokenPipeError("the run-worker zygote exited")
    return line.strip()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks since boot; with the pid, it identifies
    the process across pid reuse), from one read of /proc; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def worker_identity(pid: int) -> str:
    """What `WORKER_TAG` holds: the run worker's pid and its start time (a reused pid is not the worker)."""
    return f"{pid}:{_start_ticks(pid) or 0}"


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _live_worker(run: DagsterRun, root_directory: str) -> int | None:
    """The pid of the worker running `run`: the one its tag names, alive, and running this run (a
    worker serves several runs, one after another)."""
    from constellation_dagster.zygote import running_run

    identity = run.tags.get(WORKER_TAG)
    if not identity:
        return None
    pid_text, _, ticks = identity.partition(":")
    stat = _proc_stat(int(pid_text))
    if stat is None or stat[0] == "Z" or (ticks not in ("", "0") and stat[1] != int(ticks)):
        return None
    if running_run(root_directory, int(pid_text)) != run.run_id:
        return None
    return int(pid_text)


class PromptQueuedRunCoordinator(QueuedRunCoordinator):
    """Dagster's queued run coordinator; `dequeue_interval_seconds` may be a fraction of a second.

    Registered with an instance, it also builds the instance's run launcher: Dagster builds a launcher
    only when it first launches a run, so the daemon's `WarmRunLauncher` started its zygote — ~1.8 s of
    imports — under the first run after the daemon started (P1: 2.4 s from run created to run worker
    started, against ~0.2 s for the next). The run queue asks for the coordinator as the daemon starts."""

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        instance.run_launcher  # noqa: B018 - built now: a WarmRunLauncher in the daemon warms its zygote

    @classmethod
    def config_type(cls) -> dict:
        return {**super().config_type(),
                "dequeue_interval_seconds": Field(Float, is_required=False, default_value=0.2)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        interval = float(config_value.get("dequeue_interval_seconds", 0.2))
        coordinator = super().from_config_value(inst_data, {**config_value, "dequeue_interval_seconds": 1})
        coordinator._dequeue_interval_seconds = interval  # noqa: SLF001 - the one value we change
        return coordinator

"""The warm run-worker zygote: a process that has already imported Dagster and our code, and forks
one child per Dagster run.

A stock Dagster run worker is a fresh interpreter (`dagster api execute_run`) that imports Dagster and
loads the code location before its first op starts (the model and PyTorch live in the device workers,
`constellation_ray`, not in run workers). Forking from a process that has done all of that takes milliseconds; the child then runs the
run exactly as `dagster api execute_run` would (`_execute_run_command_body`: run monitoring, engine
events and SIGINT as the cancel signal all behave the same).

The zygote also starts one multiprocessing forkserver, with the same modules preloaded, before it forks
anything: the multiprocess executor of every run (the `parallel` job) then forks its step processes
from it instead of starting, and preloading, a forkserver of its own per run.

Protocol (with `WarmRunLauncher`): one JSON line per run on stdin, `{"run_id", "instance_ref"}`;
the zygote answers with one line, the child's pid. It exits when its stdin closes (the launching
process went away); runs already forked go on to their end. Nothing CUDA is touched before a fork.
"""

from __future__ import annotations

import gc
import importlib
import json
import multiprocessing
import multiprocessing.forkserver as mp_forkserver
import os
import signal
import sys
from typing import Any

# What run workers and their step processes find imported (the zygote and its forkserver preload them).
WARM_MODULES = ("constellation_dagster.definitions",)

# What a run worker imports beyond the code location (Dagster's run-execution machinery).
RUN_WORKER_MODULES = ("dagster._cli.api", "dagster._core.execution.api", "dagster._core.instance")


def main(preload: list[str]) -> None:
    # Keep the protocol's pipes off fds 0/1: everything forked or spawned from here (the forkserver,
    # run workers, their steps) gets /dev/null for stdin and our stderr for stdout.
    requests = os.fdopen(os.dup(0), "r", buffering=1)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)

    for module in (*preload, *RUN_WORKER_MODULES):
        importlib.import_module(module)
    multiprocessing.set_forkserver_preload(list(preload))
    mp_forkserver.ensure_running()
    # Children are reaped by the kernel; a run worker's pid disappears from /proc when it exits.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    gc.freeze()  # what is imported stays shared with the children, untouched by their collector
    replies.write("ready\n")

    instances: dict[str, Any] = {}
    for line in requests:
        request = json.loads(line)
        instance = _instance(instances, request["instance_ref"])
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            os._exit(_run_in_child(request["run_id"], instance))
        replies.write(f"{pid}\n")


def _instance(instances: dict[str, Any], instance_ref_json: str) -> Any:
    """The Dagster instance of a ref, built once here (its storages check their tables on creation)
    and inherited by every child. Safe to share across fork: Dagster's Postgres storages use
    SQLAlchemy's NullPool, so no connection is open between uses."""
    if instance_ref_json not in instances:
        from dagster._core.instance import DagsterInstance, InstanceRef
        from dagster._serdes import deserialize_value

        instance = DagsterInstance.from_ref(deserialize_value(instance_ref_json, InstanceRef))
        instance.run_storage, instance.event_log_storage  # noqa: B018 - build them before forking
        instances[instance_ref_json] = instance
    return instances[instance_ref_json]


def _run_in_child(run_id: str, instance: Any) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the executor waits on its own step processes
    _adopt_parent_forkserver()
    code = 1
    try:
        from dagster._cli.api import _execute_run_command_body
        from dagster._utils.interrupts import capture_interrupts

        with capture_interrupts(), instance:
            code = _execute_run_command_body(run_id, instance, lambda _event: None,
                                             set_exit_code_on_failure=False)
    except BaseException:  # noqa: BLE001 - the run's failure is already in Dagster's event log
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _adopt_parent_forkserver() -> None:
    """Use the zygote's forkserver from this (forked) child.

    multiprocessing checks that its forkserver is alive with `waitpid`, which only works in the
    process that started it; from a child the server is reached the same way (its socket address
    and alive fd were inherited), so only the liveness check is replaced.
    """
    server = mp_forkserver._forkserver  # noqa: SLF001 - the module-level singleton of the stdlib
    if server._forkserver_pid is None:  # noqa: SLF001
        return
    server_pid = server._forkserver_pid  # noqa: SLF001
    start_server = server.ensure_running

    def ensure_running() -> None:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            server._forkserver_pid = None  # noqa: SLF001 - gone: start a private one as stock does
            server._forkserver_address = None  # noqa: SLF001
            server._forkserver_alive_fd = None  # noqa: SLF001
            server.ensure_running = start_server
            start_server()
            return
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()

    server.ensure_running = ensure_running


if __name__ == "__main__":
    main(sys.argv[1:] or list(WARM_MODULES))

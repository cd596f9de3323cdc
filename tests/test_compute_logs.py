"""A run's captured stdout/stderr (`constellation_dagster/compute_logs.py`): the files Dagit reads get
everything written to the streams, Python's and C's alike, the run worker's own streams still get it,
and no process is started for it (Dagster's stock manager starts four per run)."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import yaml
from dagster._core.storage.compute_log_manager import ComputeIOType
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

from constellation_core.settings import REPO_ROOT
from constellation_dagster.compute_logs import ComputeLogManager

# Run as a run worker is: its own process, stdout and stderr file descriptors 1 and 2 (pipes to the
# daemon's log), no process may be started.
WORKER = """
import os, subprocess, sys
from constellation_dagster.compute_logs import ComputeLogManager
def no_process(*args, **kwargs):
    raise AssertionError(f"a process was started to capture logs: {args}")
subprocess.Popen = no_process
manager = ComputeLogManager(base_dir=sys.argv[1])
key = ["run-1", "compute_logs", "abcdef"]
with manager.capture_logs(key):
    print("from print", flush=True)
    os.write(1, b"from the descriptor\\n")  # as C code (a library, a child) writes
    print("to stderr", file=sys.stderr)
with manager.capture_logs(key):  # the streams were restored and can be captured again
    print("again")
print("after")
"""


def test_captured_output_reaches_the_files_dagit_reads_and_the_workers_streams(tmp_path):
    worker = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path)], capture_output=True, text=True,
                            timeout=60, cwd=REPO_ROOT)
    assert worker.returncode == 0, worker.stderr
    manager = ComputeLogManager(base_dir=str(tmp_path))
    key = ["run-1", "compute_logs", "abcdef"]
    assert manager.is_capture_complete(key)
    data = manager.get_log_data(key)
    assert data.stdout.decode() == "from print\nfrom the descriptor\nagain\n"
    assert data.stderr.decode() == "to stderr\n"
    # … and the worker's own streams still got all of it
    assert worker.stdout == "from print\nfrom the descriptor\nagain\nafter\n"
    assert worker.stderr == "to stderr\n"


def test_without_a_base_dir_the_logs_go_where_dagsters_default_puts_them(tmp_path):
    ours = yaml.safe_load((REPO_ROOT / "infra" / "dagster" / "dagster.yaml").read_text())["compute_logs"]
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({"compute_logs": ours}))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:  # (no DAGSTER_HOME needed)
        manager = instance.compute_log_manager
        assert isinstance(manager, ComputeLogManager)
        assert manager.get_captured_local_path(["r", "k"], "out").startswith(str(tmp_path / "storage"))


def test_dagster_local_compute_log_manager_is_still_what_this_extends():
    """It keeps Dagster's files, layout and reading side; only capture is replaced."""
    assert issubclass(ComputeLogManager, LocalComputeLogManager)
    for name in ("get_captured_local_path", "complete_artifact_path", "get_log_data", "is_capture_complete"):
        assert hasattr(LocalComputeLogManager, name), f"LocalComputeLogManager lost {name}"
    assert {"base_dir"} <= set(LocalComputeLogManager.config_type())
    assert ComputeIOType.STDOUT and ComputeIOType.STDERR

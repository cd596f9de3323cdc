"""Dagster's local compute logs, mirrored by a thread instead of four processes per run.

Dagster captures a run's stdout and stderr into files that Dagit shows (Runs → a run → stdout/stderr)
and mirrors them to the run worker's own streams (our daemon log). Its `LocalComputeLogManager` does
the mirroring with a `tail -F` process per stream, each watched by a fresh Python interpreter
(`watch_orphans.py`) that kills the tail if the worker dies: four process starts per run, ~60 ms of
CPU per run here (P9: 84 watcher interpreters and ~60 tails over a 40-job backlog), plus the forks of
a large run worker.

`ComputeLogManager` keeps the same files, layout and Dagit view (it is a `LocalComputeLogManager`),
and mirrors with a thread: the stream's file descriptor is pointed at a pipe whose reader appends to
the capture file and writes on to where the descriptor pointed before. A killed worker leaves nothing
behind (the thread dies with it). Named in `infra/dagster/dagster.yaml`; `tests/test_compute_logs.py`
fails when Dagster's base class changes what this relies on.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import IO

from dagster import Field, StringSource
from dagster._core.instance.ref import compute_logs_directory
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file

# How long the end of a capture waits for the mirror to copy what was written (a process the run
# started may still hold the pipe open; the thread then copies on until that process closes it).
DRAIN_S = 5.0


class ComputeLogManager(LocalComputeLogManager):
    """`LocalComputeLogManager` that mirrors captured output with a thread, not tail processes.
    `base_dir` defaults to the instance's `storage` folder, as Dagster's default compute logs."""

    def __init__(self, base_dir: str | None = None, polling_timeout: float | None = None,
                 inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir or "", polling_timeout=polling_timeout, inst_data=inst_data)

    @property
    def _base_dir(self) -> str:  # (read by every LocalComputeLogManager method)
        return self._configured_base_dir or compute_logs_directory(self._instance.root_directory)

    @_base_dir.setter
    def _base_dir(self, value: str) -> None:
        self._configured_base_dir = value

    @classmethod
    def config_type(cls):
        return {**super().config_type(), "base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> ComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        with mirrored(sys.stdout, outpath), mirrored(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        touch_file(self.complete_artifact_path(log_key))  # (as Dagster's: the capture is complete)


@contextmanager
def mirrored(stream: IO, path: str) -> Generator[None, None, None]:
    """While inside: what is written to `stream`'s file descriptor (by Python or by C code) is
    appended to `path` and still reaches where the descriptor pointed before."""
    ensure_file(path)
    try:
        fd = stream.fileno()
    except (AttributeError, io.UnsupportedOperation):  # a stream with no descriptor (a test runner's)
        yield
        return
    stream.flush()
    original = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    copier = threading.Thread(target=_copy, args=(read_end, path, original), daemon=True,
                              name=f"compute-log mirror of fd {fd}")
    copier.start()
    try:
        yield
    finally:
        stream.flush()
        os.dup2(original, fd)  # the pipe's last write end here is closed: the copier reads its end
        copier.join(DRAIN_S)
        if not copier.is_alive():
            os.close(original)


def _copy(read_end: int, path: str, original: int) -> None:
    with open(read_end, "rb", buffering=0) as pipe, open(path, "ab", buffering=0) as capture:
        while chunk := pipe.read(65536):
            capture.write(chunk)
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(original, view):]
            except OSError:  # where the stream went is gone (its reader exited): keep the file
                pass

"""A device's compute process (`constellation_ray.compute`): the model in an interpreter of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from constellation_core.inference.model import TileClassifier, TileCNN, TrainedModel
from constellation_core.waiting import wait_for
from constellation_ray.compute import ComputeFailed, ComputeLost, ComputeProcess


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(3)
    return TrainedModel(TileCNN(), "test-cnn@0001", 0.5, 0.0).save(tmp_path_factory.mktemp("models"))


@pytest.fixture()
def compute():
    process = ComputeProcess("cpu", 1, name="test")
    yield process
    process.close()


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_compute_process_classifies_as_the_model_does_and_loads_each_version_once(compute, model_path):
    images = _images(32)
    expected_classes, expected_confidences = TileClassifier(model_path).predict(images)

    first = compute.predict("test-cnn@0001", str(model_path), images)
    second = compute.predict("test-cnn@0001", str(model_path), images[:5])

    assert compute.torch_threads == 1
    assert first.classes == expected_classes
    assert first.confidences == pytest.approx(expected_confidences, abs=1e-6)
    assert second.classes == expected_classes[:5]
    assert (first.loaded, second.loaded) == (True, False), "the model is loaded once, for its first batch"
    assert first.seconds > 0 and first.began.tzinfo is not None


def test_a_batch_the_model_cannot_run_fails_with_the_reason_and_the_process_serves_on(compute, model_path, tmp_path):
    with pytest.raises(ComputeFailed, match="FileNotFoundError"):
        compute.predict("test-cnn@missing", str(tmp_path / "missing.pt"), _images(4))
    assert compute.predict("test-cnn@0001", str(model_path), _images(4)).classes


def test_a_killed_compute_process_is_reported_lost(compute, model_path):
    os.kill(compute.pid, signal.SIGKILL)
    wait_for(lambda: not compute.alive(), timeout=10, what="the compute process to die", interval=0.05)
    with pytest.raises(ComputeLost):
        compute.predict("test-cnn@0001", str(model_path), _images(4))


def test_the_compute_process_exits_when_its_worker_closes_it_or_dies():
    closed = ComputeProcess("cpu", 1, name="test")
    pid = closed.pid
    closed.close()
    assert not _alive(pid)

    # A worker SIGKILLed: its compute process is not left behind.
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from constellation_ray.compute import ComputeProcess
        print(ComputeProcess("cpu", 1, name="orphan-test").pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        orphan = int(worker.stdout.readline())
        assert _alive(orphan)
        worker.kill()
        worker.wait()
        wait_for(lambda: not _alive(orphan), timeout=10, what="the compute process to exit with its worker",
                 interval=0.05)
    finally:
        worker.kill()

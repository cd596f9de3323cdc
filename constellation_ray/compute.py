"""A device's compute in a process of its own, beside its device worker.

The device worker (`constellation_ray.worker`) claims batches, reads their tiles and commits their
results on Python threads. Run in the same process as the model, that work holds the GIL while the
model's Python (each layer's call, the softmax, the lists it returns) waits for it: measured here, a
32-tile batch took 20 ms alone and 32 ms beside a thread busy half the time in Python, and 46 ms per
batch inside the worker during a backlog. In a process of its own the model has its interpreter to
itself; the worker hands it each batch's pixels over a socket (0.1 ms for 32 tiles of 64 px) and gets
the classes back.

The compute process loads each model version once (onto the GPU Ray gave the worker: it inherits
`CUDA_VISIBLE_DEVICES`) and keeps it. It exits when its worker closes the socket or dies (the kernel
closes the worker's end: the next read here ends); should it die first, the worker's batch is pending
again and a new compute process starts.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

START_TIMEOUT_S = 120.0  # importing PyTorch (and CUDA's first use) on a slow node


class ComputeLost(RuntimeError):
    """The compute process went away (killed, crashed): the batch it had is not done."""


class ComputeFailed(RuntimeError):
    """The model raised on a batch (a missing model file, a device error): the batch's step fails."""


@dataclass(frozen=True)
class Prediction:
    classes: list[str]
    confidences: list[float]
    began: datetime  # when the device started the batch
    seconds: float  # how long it computed
    loaded: bool  # this batch loaded its model version onto the device


class ComputeProcess:
    """The process that runs a device's model. `predict` is called from one thread at a time."""

    def __init__(self, torch_device: str, torch_threads: int | None, *, name: str = "device") -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno()), torch_device, str(torch_threads or 0), name],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            )
        self._conn = Connection(ours.detach())
        if not self._conn.poll(START_TIMEOUT_S):
            self.close()
            raise ComputeLost(f"the compute process of {name} did not start within {START_TIMEOUT_S:.0f} s")
        try:
            ready = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.close()
            raise ComputeLost(f"the compute process of {name} exited as it started") from exc
        self.pid: int = self._process.pid
        self.torch_threads: int = ready["torch_threads"]

    def predict(self, model_version: str, model_uri: str, images: np.ndarray) -> Prediction:
        images = np.ascontiguousarray(images)
        try:
            self._conn.send((model_version, model_uri, images.shape, images.dtype.str))
            self._conn.send_bytes(memoryview(images).cast("B"))
            reply = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise ComputeLost(f"the compute process (pid {self._process.pid}) went away: {exc!r}") from exc
        if "error" in reply:
            raise ComputeFailed(reply["error"])
        return Prediction(reply["classes"], reply["confidences"], datetime.fromtimestamp(reply["began"], UTC),
                          reply["seconds"], reply["loaded"])

    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        self._conn.close()  # the process sees the end of its socket and exits
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def main(fd: int, torch_device: str, torch_threads: int) -> None:
    """Serve the worker on the socket `fd`. (The command line also names the device, for `ps`.)"""
    conn = Connection(fd)
    import torch

    from constellation_core.inference.model import TileClassifier

    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        conn.send({"torch_threads": torch.get_num_threads()})
    except OSError:
        return  # the worker is gone already
    models: dict[str, TileClassifier] = {}
    while True:
        try:
            model_version, model_uri, shape, dtype = conn.recv()
            pixels = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the worker closed its end, or died
        try:
            classifier, loaded = models.get(model_version), False
            if classifier is None:
                classifier = models[model_version] = TileClassifier(Path(model_uri), torch_device)
                loaded = True
            images = np.frombuffer(pixels, dtype=np.dtype(dtype)).reshape(shape)
            began = time.time()
            t0 = time.perf_counter()
            classes, confidences = classifier.predict(images)  # (its .tolist() waits for the device)
            reply = {"classes": classes, "confidences": confidences, "began": began,
                     "seconds": time.perf_counter() - t0, "loaded": loaded}
        except Exception as exc:  # noqa: BLE001 - the worker fails the batch's step with it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            conn.send(reply)
        except OSError:
            return


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))

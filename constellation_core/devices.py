"""The devices inference can run on: NVIDIA GPUs found by NVML, declared simulated GPUs, or the CPU.

Simulated devices (CONSTELLATION_SIMULATED_GPUS=N) are scheduled exactly like GPUs — their own pool,
their own steps — but compute on the CPU. They are always labelled simulated, never passed off as
hardware.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

SIMULATED_ENV = "CONSTELLATION_SIMULATED_GPUS"


@dataclass(frozen=True)
class Device:
    uuid: str
    index: int
    name: str
    kind: str  # "cuda" | "simulated" | "cpu"
    total_mem_mb: int | None = None
    compute_capability: str | None = None

    @property
    def simulated(self) -> bool:
        return self.kind == "simulated"

    @property
    def slug(self) -> str:
        """A short name usable in op and pool names."""
        if self.kind == "cuda":
            return f"gpu{self.index}"
        return f"sim{self.index}" if self.simulated else "cpu"

    @property
    def pool(self) -> str:
        return f"device-{self.slug}"

    @property
    def torch_device(self) -> str:
        # CUDA_VISIBLE_DEVICES narrows the process to this GPU, so it is always cuda:0 inside.
        return "cuda:0" if self.kind == "cuda" else "cpu"

    @property
    def label(self) -> str:
        return f"{self.name} (simulated, computes on CPU)" if self.simulated else self.name


def nvml_devices() -> list[Device]:
    """NVIDIA GPUs via NVML (nvidia-ml-py); empty when there is no driver or no GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no library, no driver: no GPUs
        return []
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            found.append(
                Device(
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    kind="cuda",
                    total_mem_mb=pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024),
                    compute_capability=f"{major}.{minor}",
                )
            )
        return found
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def simulated_devices(count: int) -> list[Device]:
    return [Device(uuid=f"SIM-GPU-{i}", index=i, name=f"Simulated GPU {i}", kind="simulated") for i in range(count)]


CPU_DEVICE = Device(uuid="CPU-0", index=0, name="CPU (no GPU found)", kind="cpu")


def discover(simulated: int | None = None) -> list[Device]:
    """Simulated devices when asked for (argument or CONSTELLATION_SIMULATED_GPUS), else NVML's GPUs,
    else the CPU."""
    if simulated is None:
        raw = os.environ.get(SIMULATED_ENV, "").strip()
        if raw and not re.fullmatch(r"\d+", raw):
            raise ValueError(f"{SIMULATED_ENV} must be a whole number, not {raw!r}")
        simulated = int(raw or 0)
    if simulated > 0:
        return simulated_devices(simulated)
    return nvml_devices() or [CPU_DEVICE]

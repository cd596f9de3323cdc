"""The devices inference can run on: NVIDIA GPUs found by NVML, declared simulated GPUs, or the CPU.

Simulated devices (CONSTELLATION_SIMULATED_GPUS=N) are scheduled exactly like GPUs — their own pool,
their own steps — but compute on the CPU. They are always labelled simulated, never passed off as
hardware.
"""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
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
    # The Ray node a simulated device belongs to, on a cluster's other machines ("" on the local one).
    node: str = ""

    @property
    def simulated(self) -> bool:
        return self.kind == "simulated"

    @property
    def slug(self) -> str:
        """A short name usable in op and pool names."""
        if self.kind == "cuda":
            slug = f"gpu{self.index}"
        else:
            slug = f"sim{self.index}" if self.simulated else "cpu"
        return f"{slug}_{self.node}" if self.node else slug

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


def simulated_devices(count: int, node: str = "") -> list[Device]:
    """Simulated devices of this machine (`node` ""), or of another node of a Ray cluster."""
    if not node:
        return [Device(uuid=f"SIM-GPU-{i}", index=i, name=f"Simulated GPU {i}", kind="simulated") for i in range(count)]
    return [Device(uuid=f"SIM-GPU-{node}-{i}", index=i, name=f"Simulated GPU {i} on node {node}", kind="simulated",
                   node=node) for i in range(count)]


def device_spec(device: Device) -> dict:
    """What `gpus.spec` stores: enough to rebuild the Device on another process (`from_spec`)."""
    return dataclasses.asdict(device)


def from_spec(spec: dict) -> Device:
    return Device(**{f.name: spec[f.name] for f in dataclasses.fields(Device) if f.name in spec})


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


# Cores the compute of one simulated device may use (default: the host's cores shared among them).
SIMULATED_THREADS_ENV = "CONSTELLATION_SIMULATED_DEVICE_THREADS"


def cpu_threads(devices: list[Device]) -> int:
    """Torch threads for one step on a simulated or CPU device: `CONSTELLATION_SIMULATED_DEVICE_THREADS`,
    else the host's cores shared among them."""
    if os.environ.get(SIMULATED_THREADS_ENV, "").strip():
        return max(1, int(os.environ[SIMULATED_THREADS_ENV]))
    sharing = sum(1 for d in devices if d.kind != "cuda")
    return max(1, (os.cpu_count() or 1) // max(1, sharing))


@dataclass(frozen=True)
class DeviceState:
    free_mem_mb: int
    utilization_pct: int


def nvml_state(devices: list[Device]) -> dict[str, DeviceState]:
    """Free memory and utilization of each NVIDIA device now (empty without NVML or GPUs)."""
    cuda = [d for d in devices if d.kind == "cuda"]
    if not cuda:
        return {}
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: no state, choose by load alone
        return {}
    try:
        states = {}
        for device in cuda:
            handle = pynvml.nvmlDeviceGetHandleByUUID(device.uuid)
            states[device.uuid] = DeviceState(
                free_mem_mb=pynvml.nvmlDeviceGetMemoryInfo(handle).free // (1024 * 1024),
                utilization_pct=pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            )
        return states
    finally:
        pynvml.nvmlShutdown()


def choose_device(devices: list[Device], work_ahead: dict[str, float], rates: dict[str, float] | None = None,
                  job_tiles: float = 0) -> Device:
    """The device a new serial job of `job_tiles` tiles should run on: the one where it would finish
    first — the work ahead of it there (device uuid → tiles) and its own tiles, at the device's rate
    (device uuid → tiles per second of device time; see `fill_rates`: without rates, every device
    counts as equally fast) — then (NVIDIA devices) the least utilized, then the most free memory,
    then the lowest index."""
    rates = fill_rates(devices, rates or {})
    states = nvml_state(devices)

    def key(device: Device) -> tuple:
        state = states.get(device.uuid)
        return ((work_ahead.get(device.uuid, 0) + job_tiles) / rates[device.uuid],
                state.utilization_pct if state else 0, -state.free_mem_mb if state else 0, device.index)

    return min(devices, key=key)


def fill_rates(devices: list[Device], measured: dict[str, float]) -> dict[str, float]:
    """Each device's rate: as measured, else the median of the measured ones (a device that has not
    run a batch lately is taken to be as fast as a typical one), else 1 for all (equally fast)."""
    known = [measured[d.uuid] for d in devices if measured.get(d.uuid, 0) > 0]
    typical = statistics.median(known) if known else 1.0
    return {d.uuid: measured[d.uuid] if measured.get(d.uuid, 0) > 0 else typical for d in devices}


def energy_counter_mj(device: Device) -> int | None:
    """The device's total energy counter in millijoules (NVML, Volta and newer); None elsewhere."""
    if device.kind != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByUUID(device.uuid)))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - not supported on this device or driver
        return None

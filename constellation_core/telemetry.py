"""GPU telemetry: one sample per device per second, fields named after DCGM's, published to NATS on
`constellation.gpus.<device uuid>.metrics`.

Real GPUs are read through NVML. Simulated and CPU devices have no sensors: their utilization is
whether an inference step holds the device, their memory is that step's resident memory, and every
other field is null — and the sample says `simulated: true`. Each sample names the job running on
the device (from the `steps` table; for real GPUs, NVML's process list must also show the step's pid).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NamedTuple
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import Engine, select

from constellation_core.devices import Device
from constellation_core.events import SUBJECT_ROOT
from constellation_core.tables import gpus, jobs, steps

log = logging.getLogger(__name__)

FIELDS = (
    "DCGM_FI_DEV_GPU_UTIL",  # %
    "DCGM_FI_DEV_FB_USED",  # MiB
    "DCGM_FI_DEV_FB_TOTAL",  # MiB
    "DCGM_FI_DEV_GPU_TEMP",  # °C
    "DCGM_FI_DEV_POWER_USAGE",  # W
    "DCGM_FI_DEV_SM_CLOCK",  # MHz
    "DCGM_FI_DEV_MEM_CLOCK",  # MHz
)


class GpuSample(BaseModel):
    type: Literal["gpu.metrics"] = "gpu.metrics"
    device_uuid: str
    name: str
    simulated: bool
    ts: datetime
    job_id: UUID | None = None
    account_id: UUID | None = None  # the account of `job_id` (who may see which job a device runs)
    pids: list[int] = []
    fields: dict[str, float | None]

    @property
    def subject(self) -> str:
        return f"{SUBJECT_ROOT}.gpus.{self.device_uuid}.metrics"


class Holder(NamedTuple):
    """An inference step holding a device now."""

    job_id: UUID
    account_id: UUID
    pid: int


def open_steps(engine: Engine) -> dict[str, list[Holder]]:
    """Device uuid → the inference steps holding it now."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(gpus.c.uuid, steps.c.job_id, jobs.c.account_id, steps.c.pid)
            .join(steps, steps.c.gpu_id == gpus.c.id)
            .join(jobs, jobs.c.id == steps.c.job_id)
            .where(steps.c.finished_at.is_(None))
        ).all()
    held: dict[str, list[Holder]] = {}
    for uuid, job_id, account_id, pid in rows:
        held.setdefault(uuid, []).append(Holder(job_id, account_id, pid))
    return held


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def sample_without_sensors(device: Device, holders: list[Holder]) -> GpuSample:
    fields = dict.fromkeys(FIELDS)
    fields["DCGM_FI_DEV_GPU_UTIL"] = 100.0 if holders else 0.0
    memory = [m for m in (_rss_mib(h.pid) for h in holders) if m is not None]
    fields["DCGM_FI_DEV_FB_USED"] = sum(memory) if memory else 0.0
    return GpuSample(
        device_uuid=device.uuid, name=device.label, simulated=device.kind != "cuda", ts=datetime.now(UTC),
        job_id=holders[0].job_id if holders else None, account_id=holders[0].account_id if holders else None,
        pids=[h.pid for h in holders], fields=fields,
    )


def sample_nvml(device: Device, holders: list[Holder]) -> GpuSample:
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByUUID(device.uuid)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    fields = {
        "DCGM_FI_DEV_GPU_UTIL": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        "DCGM_FI_DEV_FB_USED": round(memory.used / 2**20, 1),
        "DCGM_FI_DEV_FB_TOTAL": round(memory.total / 2**20, 1),
        "DCGM_FI_DEV_GPU_TEMP": float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        "DCGM_FI_DEV_POWER_USAGE": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
        "DCGM_FI_DEV_SM_CLOCK": float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "DCGM_FI_DEV_MEM_CLOCK": float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
    }
    on_device = {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    attributed = [h for h in holders if h.pid in on_device]
    return GpuSample(
        device_uuid=device.uuid, name=device.label, simulated=False, ts=datetime.now(UTC),
        job_id=attributed[0].job_id if attributed else None,
        account_id=attributed[0].account_id if attributed else None, pids=sorted(on_device), fields=fields,
    )


def sample_all(devices: list[Device], engine: Engine) -> list[GpuSample]:
    held = open_steps(engine)
    return [
        (sample_nvml if d.kind == "cuda" else sample_without_sensors)(d, held.get(d.uuid, []))
        for d in devices
    ]


class DcgmExporter:
    """The latest samples as Prometheus gauges under DCGM exporter's metric and label names (`gpu`,
    `UUID`, `modelName`, `Hostname`), so the community DCGM Grafana board works unchanged; simulated
    devices carry `simulated="true"`. A field a device has no sensor for is left out, not zero."""

    def __init__(self, registry=None) -> None:
        from prometheus_client import REGISTRY, Gauge

        self.registry = registry or REGISTRY
        labels = ["gpu", "UUID", "modelName", "Hostname", "simulated"]
        self.gauges = {name: Gauge(name, f"DCGM field {name} (as dcgm-exporter names it)", labels,
                                   registry=self.registry) for name in FIELDS}

    def update(self, devices: list[Device], samples: list[GpuSample]) -> None:
        import socket

        by_uuid = {d.uuid: d for d in devices}
        for sample in samples:
            device = by_uuid.get(sample.device_uuid)
            labels = {"gpu": str(device.index if device else 0), "UUID": sample.device_uuid,
                      "modelName": sample.name, "Hostname": (device.node if device and device.node else
                                                             socket.gethostname()),
                      "simulated": str(sample.simulated).lower()}
            for name, value in sample.fields.items():
                if name in self.gauges and value is not None:
                    self.gauges[name].labels(**labels).set(value)


async def run_agent(devices: list[Device], engine: Engine, nats_url: str, *, interval: float = 1.0,
                    exporter: DcgmExporter | None = None) -> None:
    """Sample every device every `interval` seconds and publish (and export, given an exporter),
    until cancelled."""
    from constellation_core.bus import connect

    if any(d.kind == "cuda" for d in devices):
        import pynvml

        pynvml.nvmlInit()
    nc = await connect(nats_url, name="constellation-gpu-agent")
    loop = asyncio.get_running_loop()
    try:
        while True:
            started = loop.time()
            try:
                samples = await asyncio.to_thread(sample_all, devices, engine)
                if exporter is not None:
                    exporter.update(devices, samples)
                for sample in samples:
                    await nc.publish(sample.subject, sample.model_dump_json().encode())
            except Exception:  # noqa: BLE001 - Postgres or NATS away for a moment: skip this sample, not the agent
                log.warning("sampling the devices failed; trying again next interval", exc_info=True)
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
    finally:
        await nc.drain()

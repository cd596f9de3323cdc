"""Device discovery: simulated devices when declared, labelled as such; the CPU when nothing else."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from sqlalchemy import select

from constellation_core.devices import (
    CPU_DEVICE,
    SIMULATED_ENV,
    discover,
    simulated_devices,
)
from constellation_core.tables import gpus
from constellation_dagster.resources import GpuFleet


def test_declared_simulated_devices_are_labelled(monkeypatch):
    monkeypatch.setenv(SIMULATED_ENV, "2")
    devices = discover()
    assert [d.uuid for d in devices] == ["SIM-GPU-0", "SIM-GPU-1"]
    assert all(d.simulated and "simulated" in d.label for d in devices)
    assert {d.pool for d in devices} == {"device-sim0", "device-sim1"}


def test_a_bad_simulated_count_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(SIMULATED_ENV, "two")
    with pytest.raises(ValueError, match="whole number"):
        discover()


def test_without_gpus_or_simulation_the_cpu_is_the_device(monkeypatch):
    monkeypatch.delenv(SIMULATED_ENV, raising=False)
    monkeypatch.setattr("constellation_core.devices.nvml_devices", lambda: [])
    assert discover() == [CPU_DEVICE]


def test_gpus_table_lists_devices_with_the_simulated_flag(engine):
    with engine.begin() as conn:
        ids = GpuFleet(simulated_gpus=2).sync(conn)
        rows = conn.execute(select(gpus).where(gpus.c.uuid.like("SIM-GPU-%")).order_by(gpus.c.uuid)).all()
    assert set(ids) == {"SIM-GPU-0", "SIM-GPU-1"}
    assert [(r.uuid, r.simulated) for r in rows] == [("SIM-GPU-0", True), ("SIM-GPU-1", True)]
    assert all("simulated" in r.name for r in rows)


class FakeNvml:
    """A stand-in for pynvml (no NVIDIA driver on the test machine): two GPUs with set state."""

    class _Memory:
        def __init__(self, free_mb: int) -> None:
            self.free = free_mb * 2**20

    class _Utilization:
        def __init__(self, gpu: int) -> None:
            self.gpu = gpu

    def __init__(self, state: dict[str, tuple[int, int]], energy_mj: dict[str, int] | None = None) -> None:
        self.state, self.energy_mj = state, energy_mj or {}

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: str):  # noqa: N802
        return self._Memory(self.state[handle][0])

    def nvmlDeviceGetUtilizationRates(self, handle: str):  # noqa: N802
        return self._Utilization(self.state[handle][1])

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:  # noqa: N802
        return self.energy_mj[handle]


def _gpus() -> list:
    from constellation_core.devices import Device

    return [Device(uuid=f"GPU-{i}", index=i, name="NVIDIA H100", kind="cuda", total_mem_mb=81559,
                   compute_capability="9.0") for i in range(2)]


def test_a_serial_job_goes_to_the_least_loaded_gpu_by_nvml_state(monkeypatch):
    from constellation_core.devices import choose_device

    gpu0, gpu1 = _gpus()
    # Both idle by our count: the busier GPU (another tenant's process) is avoided...
    monkeypatch.setitem(__import__("sys").modules, "pynvml", FakeNvml({"GPU-0": (70000, 85), "GPU-1": (70000, 3)}))
    assert choose_device([gpu0, gpu1], {}) == gpu1
    # ...equal utilization: the one with more free memory...
    monkeypatch.setitem(__import__("sys").modules, "pynvml", FakeNvml({"GPU-0": (80000, 0), "GPU-1": (20000, 0)}))
    assert choose_device([gpu0, gpu1], {}) == gpu0
    # ...and our own open steps come first.
    assert choose_device([gpu0, gpu1], {"GPU-0": 1}) == gpu1


def test_a_serial_job_goes_to_the_gpu_where_it_would_finish_first_at_its_rate(monkeypatch):
    from constellation_core.devices import choose_device, fill_rates

    gpu0, gpu1 = _gpus()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", FakeNvml({"GPU-0": (70000, 0), "GPU-1": (70000, 0)}))
    # Equally fast (no rates): the fewer tiles ahead; three times as fast: three times the tiles ahead is as soon.
    assert choose_device([gpu0, gpu1], {"GPU-0": 1000, "GPU-1": 2000}, job_tiles=100) == gpu0
    assert choose_device([gpu0, gpu1], {"GPU-0": 1000, "GPU-1": 2000}, {"GPU-0": 100, "GPU-1": 300}, 100) == gpu1
    # Its own tiles count too: a big job goes to the fast device even with more work ahead there.
    assert choose_device([gpu0, gpu1], {"GPU-1": 300}, {"GPU-0": 100, "GPU-1": 300}, 10) == gpu0
    assert choose_device([gpu0, gpu1], {"GPU-1": 300}, {"GPU-0": 100, "GPU-1": 300}, 1000) == gpu1
    # A device with no recent batch counts as the middle of the measured ones; none measured: all equal.
    three = [*_gpus(), dataclasses.replace(gpu0, uuid="GPU-2", index=2)]
    assert fill_rates(three, {"GPU-0": 100, "GPU-1": 300}) == {"GPU-0": 100, "GPU-1": 300, "GPU-2": 200}
    assert fill_rates(three, {}) == {"GPU-0": 1.0, "GPU-1": 1.0, "GPU-2": 1.0}


def test_energy_comes_from_nvml_counters_and_is_never_invented(monkeypatch):
    from constellation_core.devices import energy_counter_mj, simulated_devices

    gpu0, _ = _gpus()
    monkeypatch.setitem(__import__("sys").modules, "pynvml",
                        FakeNvml({"GPU-0": (1, 1)}, energy_mj={"GPU-0": 123_456}))
    assert energy_counter_mj(gpu0) == 123_456
    assert energy_counter_mj(simulated_devices(1)[0]) is None


def test_simulated_devices_share_the_cores(monkeypatch):
    from constellation_core.devices import cpu_threads, simulated_devices

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert cpu_threads(simulated_devices(2)) == 4
    assert cpu_threads(simulated_devices(16)) == 1
    assert cpu_threads(_gpus()) == 8
    monkeypatch.setenv("CONSTELLATION_SIMULATED_DEVICE_THREADS", "1")  # a core per simulated device (P9 bench)
    assert cpu_threads(simulated_devices(2)) == 1


def test_a_device_worker_that_died_starts_again_at_once_and_one_that_keeps_dying_waits_longer(monkeypatch):
    """Its device's jobs wait while it is down: after a death (a kill, an OOM) it starts again at once;
    one that dies again soon after starting is in a crash loop and waits longer each time."""
    import time
    from types import SimpleNamespace

    from ray.exceptions import RayError

    from constellation_ray import host

    monkeypatch.setattr(host, "sync_engine", lambda url: None)
    monkeypatch.setattr(host.ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "head"))
    monkeypatch.setattr(host.ray, "wait", lambda refs, num_returns, timeout: (refs[:1], refs[1:]))

    def died(ref):
        raise RayError("the actor died unexpectedly")

    monkeypatch.setattr(host.ray, "get", died)
    device_host = host.DeviceHost(host.HostConfig("postgresql://unused", "nats://unused", "/unused"), [])

    def dies_after(served_s: float) -> float:
        """The next wait before the device's worker starts again, after one that served this long."""
        started = time.monotonic() - served_s
        device_host.running["SIM-GPU-0"] = host.Running("SIM-GPU-0", "head", None, object(), started=started)
        device_host.watch(timeout=1)
        assert "SIM-GPU-0" not in device_host.running
        return round(device_host.retry_after["SIM-GPU-0"] - time.monotonic())

    assert [dies_after(served_s) for served_s in (20, 1, 1, 1)] == [0, host.RESTART_BACKOFF_S,
                                                                     2 * host.RESTART_BACKOFF_S,
                                                                     4 * host.RESTART_BACKOFF_S]
    assert dies_after(host.SERVED_LONG_S + 1) == 0, "one that served a while is no crash loop"


def test_a_device_does_not_start_a_job_while_a_job_ahead_of_it_is_still_planning(engine, database_url, nats_url,
                                                                                  make_account, monkeypatch,
                                                                                  tmp_path):
    """Runs start in the queue's order, but a later job's planning can end first: its first batch waits
    (briefly) for the job ahead of it that will come to this device, so jobs start in order. A job
    already started, a job ahead that is not coming here, or one planning too long hold nothing back."""
    from datetime import timedelta

    from sqlalchemy import func, insert, update

    from constellation_core.tables import jobs, steps, tile_chunks, tiles
    from constellation_ray import worker as worker_module

    class NoCompute:  # the claim is what is tested: no compute process
        pid, torch_threads = 0, 1

    monkeypatch.setattr(worker_module.DeviceWorker, "_start_compute", lambda self: NoCompute())
    device = simulated_devices(1)[0]
    worker = worker_module.DeviceWorker(device, database_url, nats_url, str(tmp_path), host="test")
    owner = make_account()
    aoi = func.ST_GeomFromText("POLYGON((6 46,6.1 46,6.1 46.1,6 46.1,6 46))", 4326)

    def job(name: str, priority: int = 0, **values) -> uuid.UUID:
        with engine.begin() as conn:
            return conn.execute(insert(jobs).values(
                name=name, state="running", priority=priority, submitted_by=owner.name, account_id=owner.id,
                zoom=17, aoi=aoi, tiles_total=1, **values).returning(jobs.c.id)).scalar_one()

    def admit(job_id: uuid.UUID) -> None:
        with engine.begin() as conn:
            conn.execute(insert(steps).values(job_id=job_id, gpu_id=worker.gpu_id, step_key="admit", pid=1))
            conn.execute(insert(tile_chunks).values(job_id=job_id, chunk_no=0, tiles=1))
            conn.execute(insert(tiles).values(job_id=job_id, z=17, x=1, y=1, chunk_no=0,
                                              footprint=func.ST_MakeEnvelope(6, 46, 6.1, 46.1, 4326)))

    def claimed() -> uuid.UUID | None:
        batch = worker._claim()
        if batch is None:
            return None
        batch.close()
        return batch.admission.job_id

    ahead = job("ahead")  # its run started just now: planning
    later = job("later")
    admit(later)
    assert claimed() is None, "the later job started while the job ahead of it planned"
    assert worker._held_back(), "the worker looks again soon, not in IDLE_RECHECK_S"
    admit(ahead)
    assert claimed() == ahead

    lower = job("lower", priority=-1)
    admit(lower)
    with engine.begin() as conn:
        conn.execute(update(tile_chunks).where(tile_chunks.c.job_id.in_([ahead, later])).values(state="done"))
    planning = job("planning")  # ahead of `lower` by priority, not admitted yet
    assert claimed() is None
    with engine.begin() as conn:  # … for too long now: it holds nothing back any more
        conn.execute(update(jobs).where(jobs.c.id == planning).values(
            updated_at=func.now() - timedelta(seconds=worker_module.AHEAD_PLANNING_S + 1)))
    assert claimed() == lower

    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == planning).values(updated_at=func.now()))
        conn.execute(update(jobs).where(jobs.c.id == lower).values(first_batch_at=func.now()))
    assert claimed() == lower, "a job already started goes on"
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == lower).values(first_batch_at=None))
        conn.execute(update(jobs).where(jobs.c.id == planning).values(device_uuid="GPU-elsewhere"))
    assert claimed() == lower, "a serial job bound to another device does not hold this one back"

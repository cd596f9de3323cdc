"""Device discovery: simulated devices when declared, labelled as such; the CPU when nothing else."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from constellation_core.tables import gpus

from constellation_core.devices import CPU_DEVICE, SIMULATED_ENV, discover
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


def test_lease_hides_other_gpus_from_a_simulated_step(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    fleet = GpuFleet(simulated_gpus=2)
    device = fleet.devices()[1]
    import os

    with fleet.lease(device) as torch_device:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and torch_device == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_gpus_table_lists_devices_with_the_simulated_flag(engine):
    with engine.begin() as conn:
        ids = GpuFleet(simulated_gpus=2).sync(conn)
        rows = conn.execute(select(gpus).where(gpus.c.uuid.like("SIM-GPU-%")).order_by(gpus.c.uuid)).all()
    assert set(ids) == {"SIM-GPU-0", "SIM-GPU-1"}
    assert [(r.uuid, r.simulated) for r in rows] == [("SIM-GPU-0", True), ("SIM-GPU-1", True)]
    assert all("simulated" in r.name for r in rows)

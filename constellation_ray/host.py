"""The device host: starts a local Ray (or joins the cluster at `RAY_ADDRESS`) and keeps one device
worker actor per device of every node alive.

Devices are found per node: a node that declares the `constellation_simulated_gpu` resource has that
many simulated devices; a node with GPUs gets one actor per GPU (`num_gpus=1`: Ray sets the actor's
`CUDA_VISIBLE_DEVICES`, the actor finds its GPU by NVML); the local machine without either serves on
its CPU, as before. Each actor registers its device in `gpus` with its host and Ray node. When an
actor or its node dies, its device is marked gone (`gpus.gone_at`); an actor that died on a live node
is started again.

Every Ray address here is loopback unless a cluster says otherwise: `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
keeps a local Ray's listeners on 127.0.0.1 (Ray otherwise binds all interfaces and names the node by its
network address), and Ray 2.60's token authentication is on.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
if not os.environ.get("RAY_ADDRESS") or os.environ["RAY_ADDRESS"].startswith(("127.", "localhost")):
    # Read by Ray when it is imported: a local Ray (and a driver of a loopback cluster) listens on
    # 127.0.0.1 only and names its nodes by that address.
    os.environ.setdefault(LOOPBACK_ENV, "0")

import ray  # noqa: E402 - after the loopback setting, which Ray reads on import
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sqlalchemy import func, update

from constellation_core.db import sync_engine
from constellation_core.devices import (
    Device,
    cpu_threads,
    device_spec,
    from_spec,
    nvml_devices,
    simulated_devices,
)
from constellation_core.tables import gpus

log = logging.getLogger(__name__)

SIM_RESOURCE = "constellation_simulated_gpu"
NAMESPACE = "constellation"
# A device worker that died is started again at once: its device's jobs wait for it (one that served a
# while and died, e.g. killed, was down ~6 s longer with a fixed 5 s wait). One that dies again soon
# after its start is in a crash loop: it waits RESTART_BACKOFF_S, twice that after the next, and so on.
RESTART_BACKOFF_S = 5.0
RESTART_BACKOFF_MAX_S = 60.0
SERVED_LONG_S = 60.0  # an actor that served this long before it died starts afresh: at once


def restart_wait(deaths_in_a_row: int) -> float:
    """How long to wait before starting a device's worker again after its n-th quick death in a row."""
    if deaths_in_a_row <= 1:
        return 0.0
    return min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (deaths_in_a_row - 2))


@dataclass(frozen=True)
class HostConfig:
    database_url: str
    nats_url: str
    demo_imagery_dir: str
    ray_address: str | None = None
    torch_threads: int | None = None
    # The host's OpenTelemetry settings (`OTEL_*`), for workers on any node of the cluster.
    otel_env: tuple[tuple[str, str], ...] = field(default_factory=lambda: tuple(
        (k, v) for k, v in os.environ.items() if k.startswith("OTEL_")))


def start_ray(config: HostConfig, local_devices: list[Device]) -> None:
    """Join the cluster at `config.ray_address`, or start a local Ray that has this machine's devices."""
    common = {"namespace": NAMESPACE, "log_to_driver": True, "logging_level": logging.WARNING}
    if config.ray_address:
        ray.init(address=config.ray_address, **common)
        return
    simulated = sum(1 for d in local_devices if d.simulated)
    # Ray's log monitor (it forwards the workers' output to this process's log) looks for new log files
    # ten times a second while there are fewer than this many; then once every LOG_NAME_UPDATE_INTERVAL_S.
    # Once every 2 s halves its CPU with nothing running (bare Ray, two idle actors: 0.83 → 0.40 % of a
    # core); a new worker's first lines reach the log up to 2 s later.
    os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
    os.environ.setdefault("LOG_NAME_UPDATE_INTERVAL_S", "2")
    ray.init(
        address="local",  # always a new local Ray: never attach to another one on this machine
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        num_cpus=1,  # the actors take no CPU slot; this bounds Ray's idle worker pool
        resources={SIM_RESOURCE: simulated} if simulated else None,
        # Ray starts its workers at nice 15; a device worker feeds (or, simulated, is) the device and
        # must not lose the CPU to the orchestration around it. On a cluster: RAY_worker_niceness=0.
        _system_config={"worker_niceness": 0},
        **common,
    )


@ray.remote(num_cpus=0, max_concurrency=4)
class DeviceActor:
    """One device's worker (`constellation_ray.worker.DeviceWorker`) as a Ray actor."""

    def __init__(self, spec: dict | None, config: HostConfig, host: str, node_id: str, node_tag: str) -> None:
        from constellation_core.logs import configure_logging
        from constellation_ray.worker import DeviceWorker

        configure_logging("device-worker")
        os.environ.update(dict(config.otel_env))
        device = from_spec(spec) if spec is not None else _assigned_gpu()
        threads = config.torch_threads
        self.worker = DeviceWorker(device, config.database_url, config.nats_url, config.demo_imagery_dir,
                                   host=host if not node_tag else f"{host} (node {node_tag})", ray_node_id=node_id,
                                   torch_threads=threads)

    def serve(self) -> None:
        self.worker.serve()

    def identity(self) -> dict:
        return self.worker.identity()

    def report(self) -> dict:
        return self.worker.report()


def _assigned_gpu() -> Device:
    """The GPU Ray gave this actor (`num_gpus=1`), described by NVML."""
    ids = ray.get_gpu_ids()
    if not ids:
        raise RuntimeError("this device actor was given no GPU")
    index = int(ids[0])
    for device in nvml_devices():
        if device.index == index:
            return device
    raise RuntimeError(f"NVML does not list GPU {index}")


@dataclass
class Running:
    key: str
    node_id: str
    actor: object
    serving: object  # the ObjectRef of `serve()`: it resolves only when the actor ends
    uuid: str | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class DeviceHost:
    config: HostConfig
    local_devices: list[Device]
    running: dict[str, Running] = field(default_factory=dict)
    retry_after: dict[str, float] = field(default_factory=dict)
    deaths: dict[str, int] = field(default_factory=dict)  # a device's worker's quick deaths in a row

    def __post_init__(self) -> None:
        self.engine = sync_engine(self.config.database_url)
        self.local_node = ray.get_runtime_context().get_node_id()

    # -- what each node serves ----------------------------------------------------------------------

    def planned(self, node: dict) -> list[tuple[str, dict | None, dict]]:
        """(key, device spec or None for a GPU the actor finds itself, actor options) for a node."""
        node_id = node["NodeID"]
        resources = node.get("Resources", {})
        local = node_id == self.local_node
        tag = "" if local else node_id[:8]
        pin = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}
        simulated = int(resources.get(SIM_RESOURCE, 0))
        if simulated:
            return [(d.uuid, device_spec(d), {**pin, "resources": {SIM_RESOURCE: 1}})
                    for d in simulated_devices(simulated, tag)]
        if resources.get("GPU"):
            return [(f"{node_id}/gpu{i}", None, {**pin, "num_gpus": 1}) for i in range(int(resources["GPU"]))]
        if local:  # no GPU and nothing declared: the CPU of this machine, as without Ray
            return [(d.uuid, device_spec(d), pin) for d in self.local_devices if d.kind == "cpu"]
        return []

    # -- keeping them alive -------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Start the actor of every planned device of every live node that has none; mark the devices
        of dead nodes gone."""
        now = time.monotonic()
        for node in ray.nodes():
            node_id = node["NodeID"]
            if not node.get("Alive"):
                self._gone([r for r in self.running.values() if r.node_id == node_id])
                continue
            host = node.get("NodeManagerHostname") or socket.gethostname()
            tag = "" if node_id == self.local_node else node_id[:8]
            for key, spec, options in self.planned(node):
                if key in self.running or self.retry_after.get(key, 0) > now:
                    continue
                try:
                    actor = DeviceActor.options(**options).remote(spec, self.config, host, node_id, tag)
                    serving = actor.serve.remote()
                except RayError:
                    log.warning("starting a device worker failed", exc_info=True, extra={"device": key})
                    self.retry_after[key] = now + RESTART_BACKOFF_S
                    continue
                self.running[key] = Running(key, node_id, actor, serving, uuid=spec["uuid"] if spec else None)
                log.info("device worker started", extra={"device": key, "node": node_id})

    def watch(self, timeout: float) -> None:
        """Wait up to `timeout` for an actor to end; mark its device gone (it is started again on a live node)."""
        if not self.running:
            time.sleep(timeout)
            return
        by_ref = {r.serving: r for r in self.running.values()}
        ended, _ = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        for ref in ended:
            entry = by_ref[ref]
            try:
                ray.get(ref)
                log.warning("device worker returned", extra={"device": entry.key})
            except RayError as exc:
                log.warning("device worker died", extra={"device": entry.key, "error": repr(exc)[:500]})
            self._gone([entry])
            now = time.monotonic()
            quick = now - entry.started < SERVED_LONG_S
            self.deaths[entry.key] = self.deaths.get(entry.key, 0) + 1 if quick else 1
            self.retry_after[entry.key] = now + restart_wait(self.deaths[entry.key])

    def learn_uuids(self) -> None:
        """A GPU actor names its device once it has started."""
        for entry in self.running.values():
            if entry.uuid is None:
                try:
                    entry.uuid = ray.get(entry.actor.identity.remote(), timeout=0.5)["uuid"]
                except (GetTimeoutError, RayError):
                    pass

    def _gone(self, entries: list[Running]) -> None:
        uuids = [e.uuid for e in entries if e.uuid]
        for entry in entries:
            self.running.pop(entry.key, None)
        if uuids:
            with self.engine.begin() as conn:
                conn.execute(update(gpus).where(gpus.c.uuid.in_(uuids), gpus.c.gone_at.is_(None))
                             .values(gone_at=func.now()))
            log.warning("devices gone", extra={"devices": uuids})

    def forget_stale(self) -> None:
        """At start: no worker serves any device yet (the ones that do register again as they start)."""
        with self.engine.begin() as conn:
            conn.execute(update(gpus).where(gpus.c.gone_at.is_(None)).values(gone_at=func.now()))

    def run_forever(self, tick: float = 2.0) -> None:
        """An actor's end is seen at once (`watch`); a new node's devices within `tick` (each look asks
        the GCS for every node: an idle stack's cost)."""
        self.forget_stale()
        while True:
            self.reconcile()
            self.watch(tick)
            self.learn_uuids()


def serve(config: HostConfig, local_devices: list[Device]) -> None:
    """Run the device host until SIGTERM/SIGINT; a local Ray and every device worker end with it."""
    start_ray(config, local_devices)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # after Ray's own handlers are in place
    try:
        threads = config.torch_threads or cpu_threads(local_devices)
        DeviceHost(HostConfig(**{**config.__dict__, "torch_threads": threads}), local_devices).run_forever()
    finally:
        ray.shutdown()

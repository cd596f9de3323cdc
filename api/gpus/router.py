"""GET /gpus: the device inventory with each device's latest telemetry sample."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from api import access
from api.deps import CurrentAccount, EngineDep
from api.errors import NotFound
from api.prometheus import label_value, query_range, step_for
from constellation_core.rates import RECENT_BATCHES, rates_of
from constellation_core.tables import gpus, jobs, steps, tile_chunks
from constellation_core.telemetry import GpuSample

router = APIRouter(prefix="/gpus", tags=["gpus"])


class GpuPublic(BaseModel):
    uuid: str
    name: str
    simulated: bool = Field(description="Scheduled like a GPU but computes on the CPU (no NVIDIA GPU here)")
    total_mem_mb: int | None
    compute_capability: str | None
    host: str | None = Field(description="The machine (Ray node) the device is on; null until its worker starts")
    state: Literal["serving", "gone"] = Field(
        description="`serving`: a device worker runs on it; `gone`: its worker or its node died (see `gone_at`)")
    gone_at: datetime | None = Field(description="When the device's worker or node went away")
    busy: bool = Field(description="A job is admitted to the device now")
    job_ids: list[UUID] = Field(description="Jobs on the device now that the caller may see (admins: all; members: their own)")
    latest: GpuSample | None = Field(description="The latest telemetry sample (1 Hz), if one arrived")
    tiles_per_s: float | None = Field(
        description="Tiles per second of the device's time on batches, over the batches it finished in the last two "
                    "minutes: serial jobs go where they would finish first at these rates (null: no batch then)")


@router.get("", response_model=list[GpuPublic], name="list")
async def list_gpus(request: Request, account: CurrentAccount, engine: EngineDep) -> list[GpuPublic]:
    """Every device Constellation schedules on, simulated ones marked."""
    async with engine.connect() as conn:
        devices = (await conn.execute(select(gpus).order_by(gpus.c.name))).mappings().all()
        held = (await conn.execute(
            select(steps.c.gpu_id, steps.c.job_id, jobs.c.account_id)
            .join(jobs, jobs.c.id == steps.c.job_id).where(steps.c.finished_at.is_(None))
        )).all()
        rates = rates_of((await conn.execute(RECENT_BATCHES)).all())
    hub = request.app.state.hub
    result = []
    for device in devices:
        on_device = [h for h in held if h.gpu_id == device["id"]]
        sample = hub.latest_gpu_sample(device["uuid"])
        result.append(GpuPublic(
            uuid=device["uuid"], name=device["name"], simulated=device["simulated"],
            total_mem_mb=device["total_mem_mb"], compute_capability=device["compute_capability"],
            host=device["host"], state="gone" if device["gone_at"] else "serving", gone_at=device["gone_at"],
            busy=bool(on_device), job_ids=[h.job_id for h in on_device if access.may_see(account, h.account_id)],
            latest=access.device_sample(account, sample) if sample is not None else None,
            tiles_per_s=round(rates[device["uuid"]], 1) if device["uuid"] in rates else None,
        ))
    return result


class DeviceBatch(BaseModel):
    device_uuid: str
    job_id: UUID | None = Field(description="The job the batch belonged to, if the caller may see it")
    started_at: datetime = Field(description="When the device began computing the batch")
    finished_at: datetime = Field(description="When it was done")
    tiles: int


class DeviceTimeline(BaseModel):
    since: datetime
    until: datetime
    batches: list[DeviceBatch] = Field(description="Oldest first; the gaps between a device's batches are its idle time")


MAX_TIMELINE_BATCHES = 20_000


@router.get("/timeline", response_model=DeviceTimeline, name="timeline")
async def device_timeline(
    account: CurrentAccount, engine: EngineDep,
    seconds: Annotated[int, Query(ge=1, le=3600, description="How far back")] = 300,
) -> DeviceTimeline:
    """The batches every device computed over the last `seconds`: what the devices did, and when
    they sat idle. Another account's job is not named (`job_id` null)."""
    until = datetime.now(UTC)
    since = until - timedelta(seconds=seconds)
    async with engine.connect() as conn:
        rows = (await conn.execute(
            select(tile_chunks.c.device_uuid, tile_chunks.c.job_id, jobs.c.account_id, tile_chunks.c.started_at,
                   tile_chunks.c.finished_at, tile_chunks.c.tiles)
            .join(jobs, jobs.c.id == tile_chunks.c.job_id)
            .where(tile_chunks.c.state == "done", tile_chunks.c.finished_at >= since,
                   tile_chunks.c.started_at.is_not(None))
            .order_by(tile_chunks.c.finished_at.desc()).limit(MAX_TIMELINE_BATCHES)
        )).all()
    return DeviceTimeline(since=since, until=until, batches=[
        DeviceBatch(device_uuid=r.device_uuid, job_id=r.job_id if access.may_see(account, r.account_id) else None,
                    started_at=r.started_at, finished_at=r.finished_at, tiles=r.tiles)
        for r in reversed(rows)
    ])


TELEMETRY_MAX_S = 15 * 24 * 3600  # Prometheus keeps 15 days (constellation_devstack/prometheus.py)


@router.get("/{uuid}/telemetry", response_model=list[GpuSample], name="telemetry",
            responses={404: {"description": "No such device"},
                       503: {"description": "The metrics store (Prometheus) did not answer"}})
async def gpu_telemetry(
    uuid: Annotated[str, Path(max_length=200)], request: Request, account: CurrentAccount, engine: EngineDep,
    seconds: Annotated[int, Query(ge=1, le=TELEMETRY_MAX_S, description="How far back")] = 300,
) -> list[GpuSample]:
    """The device's telemetry over the last `seconds`, oldest first, from Prometheus (which scrapes the
    GPU agent's DCGM-named gauges every 5 s and keeps them 15 days, so no restart loses them): one
    sample per step (5 s, or coarser so a span gives at most 400), for charts that then follow the
    stream's live 1 Hz samples."""
    async with engine.connect() as conn:
        device = (await conn.execute(select(gpus.c.name, gpus.c.simulated).where(gpus.c.uuid == uuid))).first()
    if device is None:
        raise NotFound(f"no device with uuid {uuid}")
    until = datetime.now(UTC)
    found = await query_range(request.app.state.prometheus_client,
                              f'{{__name__=~"DCGM_FI_DEV_.+", UUID={label_value(uuid)}}}',
                              until - timedelta(seconds=seconds), until, step_for(seconds))
    fields: dict[float, dict[str, float | None]] = {}
    for series in found:
        for ts, value in series.points:
            fields.setdefault(ts, {})[series.labels["__name__"]] = value
    return [GpuSample(device_uuid=uuid, name=device.name, simulated=device.simulated,
                      ts=datetime.fromtimestamp(ts, UTC), fields=fields[ts]) for ts in sorted(fields)]

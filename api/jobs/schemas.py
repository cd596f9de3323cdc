"""Request and response bodies for jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from constellation_core.tiles import MAX_ZOOM, MIN_ZOOM
from constellation_core.vocabulary import DEFAULT_BATCH_SIZE, DEFAULT_MODE, DEFAULT_MODEL, JOB_MODES, JOB_STATES

JobState = Literal[JOB_STATES]  # type: ignore[valid-type]
JobMode = Literal[JOB_MODES]  # type: ignore[valid-type]


class GeoJSONArea(BaseModel):
    """What a GeoJSON file holds, in lon/lat (EPSG:4326 / CRS84): a Polygon or MultiPolygon geometry, a
    Feature of one, or a FeatureCollection of them; several features make one area, their union."""

    # Only `type` is checked here; the rest is kept as it came (extra fields, not copied or walked) and
    # checked where the area is planned (`constellation_core.geometry.area_from_geojson`): a large
    # area's megabyte of coordinates costs the event loop nothing beyond its JSON parse.
    model_config = ConfigDict(extra="allow")
    type: str = Field(description="Polygon, MultiPolygon, Feature or FeatureCollection")

    def as_geojson(self) -> dict[str, Any]:
        """The GeoJSON object as sent (a shallow copy; `model_dump` would copy every coordinate)."""
        return {"type": self.type, **(self.model_extra or {})}


class JobBase(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    # Strict numbers: `true` or `"14"` is refused, not read as 1 or 14.
    zoom: int = Field(ge=MIN_ZOOM, le=MAX_ZOOM, strict=True, description="Web-mercator zoom level of the tiles")
    model: str = Field(default=DEFAULT_MODEL, max_length=100)
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=1024, strict=True)
    priority: int = Field(default=0, ge=-100, le=100, strict=True, description="Higher runs first")
    mode: JobMode = DEFAULT_MODE


class AreaChoice(BaseModel):
    """Where: exactly one of a GeoJSON geometry or a stored area."""

    area: GeoJSONArea | None = Field(default=None, description="The area of interest")
    area_id: UUID | None = Field(default=None, description="A stored area, instead of `area`")

    @model_validator(mode="after")
    def _one_area(self) -> AreaChoice:
        if (self.area is None) == (self.area_id is None):
            raise ValueError("give exactly one of `area` (GeoJSON) or `area_id`")
        return self


class JobCreate(AreaChoice, JobBase):
    model_config = ConfigDict(extra="forbid")


class JobEstimate(AreaChoice):
    """What a submission would cost: the same area fields as `POST /jobs`, and the zoom."""

    model_config = ConfigDict(extra="forbid")
    zoom: int = JobBase.model_fields["zoom"]


class TileEstimate(BaseModel):
    tiles: int = Field(description="Tiles the area covers at this zoom")
    max_tiles: int = Field(description="The most tiles one job may have")
    area_km2: float = Field(description="Geodesic area")
    area: dict[str, Any] = Field(description="The area as the job would cover it: one GeoJSON Polygon or MultiPolygon")


class TilesPerMinute(BaseModel):
    minute: datetime
    tiles: int


class JobSummary(BaseModel):
    counts: dict[str, int] = Field(description="Jobs in each state (yours; admins: everyone's)")
    tiles_per_s: float = Field(description="Tiles inferred per second over the last two minutes")
    tiles_per_minute: list[TilesPerMinute] = Field(description="Tiles inferred per minute, last hour, oldest first")


class JobPublic(JobBase):
    id: UUID
    state: JobState
    submitted_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    tiles_total: int | None
    tiles_done: int
    progress: float = Field(description="Fraction of tiles done, 0..1")
    area: dict[str, Any]
    area_id: UUID | None
    dagster_run_id: str | None
    dagit_url: str | None
    error: str | None


class RunPublic(BaseModel):
    dagster_run_id: str
    state: str
    started_at: datetime
    finished_at: datetime | None
    devices: list[str] = Field(description="Labels of the devices its inference steps ran on")
    metrics: dict[str, Any] = Field(description="tiles, gpu_seconds, tiles_per_gpu_second, peak_mem_mb, energy_joules")
    dagit_url: str


class JobDetail(JobPublic):
    runs: list[RunPublic]
    queue_position: int | None = Field(description="1 = next to start; null unless queued")
    tiles_per_s: float | None = Field(description="Latest throughput while running")
    eta_seconds: float | None = Field(description="Estimated seconds to finish while running")


class TileProperties(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    z: int
    x: int
    y: int
    class_: str | None = Field(alias="class", description="Predicted land-cover class; null until inferred")
    confidence: float | None
    inference_ms: float | None
    device: str | None
    model_version: str | None
    run_id: UUID | None
    job_id: UUID | None = Field(default=None, description="Set in coverage results")


class TileFeature(BaseModel):
    type: Literal["Feature"]
    id: str = Field(description="z/x/y")
    geometry: dict[str, Any] = Field(description="The tile's footprint, a GeoJSON Polygon in lon/lat")
    properties: TileProperties


class TileFeatureCollection(BaseModel):
    type: Literal["FeatureCollection"]
    features: list[TileFeature]
    truncated: bool = Field(default=False, description="More tiles matched than `limit`")


class TraceSpan(BaseModel):
    """One span of a job's trace, timed from the trace's first span."""

    span_id: str
    parent_id: str | None = Field(description="The span this one is a child of (None for the trace's root)")
    name: str
    service: str = Field(description="The process that recorded it (its OpenTelemetry `service.name`)")
    start_ms: float = Field(description="Milliseconds after the trace's first span started")
    duration_ms: float
    error: bool
    attributes: dict[str, str | int | float | bool]


class JobTrace(BaseModel):
    """A job's trace as its trace store keeps it: the submit request, the queue wait, dispatch, the
    Dagster run and its ops, each batch on each device, the events published and the job's end."""

    trace_id: str
    started_at: datetime
    duration_ms: float
    spans: list[TraceSpan] = Field(description="Ordered by start")

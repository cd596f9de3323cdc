from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse

from api import access
from api.deps import CurrentAccount, EngineDep, PublisherDep, SettingsDep
from api.errors import REFUSED_METHODS, MethodNotAllowed
from api.jobs import service, trace
from api.jobs.logs import log_stream
from api.jobs.repository import SORTS
from api.jobs.schemas import (
    JobCreate,
    JobDetail,
    JobEstimate,
    JobPublic,
    JobState,
    JobSummary,
    JobTrace,
    TileEstimate,
    TileFeatureCollection,
)
from api.json_text import json_response
from api.metrics import JOBS_SUBMITTED
from api.offload import OffloadedJSONRoute
from api.pagination import DEFAULT_LIMIT, Cursor, Limit, Page

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=OffloadedJSONRoute)
JobSort = Literal[tuple(SORTS)]  # type: ignore[valid-type]


class GeoJSONResponse(JSONResponse):
    media_type = "application/geo+json"


IdempotencyKey = Annotated[
    str | None,
    Header(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
           description="Repeat a request safely: the same key and body return the job first created"),
]


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=JobPublic, name="create",
    responses={200: {"model": JobPublic, "description": "A repeat of an earlier request with the same Idempotency-Key"},
               429: {"description": "The account has as many jobs or tiles queued or running as it may"}},
)
async def create_job(
    body: JobCreate, account: CurrentAccount, engine: EngineDep, settings: SettingsDep, publish: PublisherDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Submit a tile-inference job. Answers at once; a Dagster run is launched for it shortly after."""
    job, event = await service.create_job(
        engine, account, body, max_tiles=settings.max_tiles_per_job, dagit_url=settings.dagit_base_url,
        idempotency_key=idempotency_key,
    )
    if event is None:
        return json_response(job, status.HTTP_200_OK, headers={"Idempotent-Replayed": "true"})
    JOBS_SUBMITTED.inc()
    await publish(event)
    return json_response(job, status.HTTP_201_CREATED)


@router.get("", response_model=Page[JobPublic], name="list")
async def list_jobs(
    account: CurrentAccount, engine: EngineDep, settings: SettingsDep,
    state: Annotated[list[JobState] | None, Query(description="Only jobs in these states")] = None,
    submitted_by: Annotated[str | None, Query(max_length=200, description="Only this account's jobs")] = None,
    created_after: Annotated[datetime | None, Query(description="Created at or after (ISO 8601)")] = None,
    created_before: Annotated[datetime | None, Query(description="Created before (ISO 8601)")] = None,
    q: Annotated[str | None, Query(max_length=200, description="Only jobs whose name contains this (any case)")] = None,
    sort: Annotated[JobSort, Query(description="`-created_at` newest first (default), `created_at` oldest first, "
                                               "`-priority` highest priority first, `name` A to Z")] = "-created_at",
    cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT,
) -> Response:
    """Jobs in `sort` order (newest first by default): members see their own, admins everyone's.
    A cursor is valid only with the sort it came from."""
    return json_response(await service.list_jobs(
        engine, account, states=state, submitted_by=submitted_by, created_after=created_after,
        created_before=created_before, name_contains=q, sort=sort, cursor=cursor, limit=limit,
        dagit_url=settings.dagit_base_url,
    ))


@router.get("/summary", response_model=JobSummary, name="summary")
async def job_summary(account: CurrentAccount, engine: EngineDep) -> JobSummary:
    """Jobs per state and tiles inferred per minute over the last hour (yours; admins: everyone's)."""
    return await service.summary(engine, account)


@router.post("/estimate", response_model=TileEstimate, name="estimate")
async def estimate_job(body: JobEstimate, account: CurrentAccount, engine: EngineDep,
                       settings: SettingsDep) -> Response:
    """How many tiles an area covers at a zoom, checked as `POST /jobs` would check it; nothing is written."""
    return json_response(await service.estimate(engine, account, body, max_tiles=settings.max_tiles_per_job))


@router.api_route("/estimate", methods=sorted(REFUSED_METHODS["/jobs/estimate"]), include_in_schema=False)
async def estimate_other_methods() -> None:
    """`/jobs/estimate` is POST only: without this, GET would reach `/jobs/{job_id}` and be a bad id."""
    raise MethodNotAllowed("`/jobs/estimate` answers POST only", headers={"Allow": "POST"})


@router.get("/{job_id}", response_model=JobDetail, name="get")
async def get_job(job_id: UUID, account: CurrentAccount, engine: EngineDep, settings: SettingsDep) -> Response:
    """A job's state and progress, its runs and their devices, queue position and ETA."""
    return json_response(await service.get_job(engine, account, job_id, dagit_url=settings.dagit_base_url))


@router.get("/{job_id}/trace", response_model=JobTrace, name="trace",
            responses={404: {"description": "No such job, or no trace of it (tracing off, or not stored yet)"},
                       503: {"description": "The trace store did not answer"}})
async def job_trace(job_id: UUID, account: CurrentAccount, engine: EngineDep, request: Request) -> JobTrace:
    """The job's trace, one span per step of its life: the submit request, its wait in the queue, the
    dispatch, the Dagster run and its ops, each batch on each device, the events it published, its end."""
    return await trace.job_trace(engine, request.app.state.trace_client, account, job_id)


@router.get("/{job_id}/tiles", response_model=TileFeatureCollection, response_class=GeoJSONResponse, name="tiles")
async def job_tiles(job_id: UUID, account: CurrentAccount, engine: EngineDep) -> Response:
    """The job's tiles as GeoJSON: footprints with their results (class, confidence, device, run)."""
    return Response(await service.job_tiles(engine, account, job_id), media_type=GeoJSONResponse.media_type)


@router.get(
    "/{job_id}/logs", name="logs", response_class=StreamingResponse,
    responses={200: {"description": "Server-Sent Events: `log` and `state` messages, each with its event id",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}},
               429: {"description": "The account holds as many streams as it may"}},
)
async def job_logs(
    job_id: UUID, request: Request, account: CurrentAccount, engine: EngineDep,
    last_event_id: Annotated[int | None, Header(ge=0, le=2**63 - 1, description="Resume after this event id")] = None,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="Resume after this event id")] = None,
) -> StreamingResponse:
    """The job's log lines and state changes, live (SSE); ends after the job's final state."""
    async with engine.connect() as conn:
        await access.require_job(conn, account, job_id)  # 404 for another account's job
    request.app.state.hub.check_stream_limit(account)
    resume = max(last_event_id or 0, after or 0)
    return StreamingResponse(log_stream(engine, request.app.state.hub, account, job_id, resume), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post(
    "/{job_id}/cancel", response_model=JobPublic, name="cancel",
    responses={404: {"description": "No such job"}, 409: {"description": "The job has already ended"}},
)
async def cancel_job(
    job_id: UUID, account: CurrentAccount, engine: EngineDep, settings: SettingsDep, publish: PublisherDep
) -> Response:
    """Cancel a queued or running job; its device is free again within one batch."""
    job, event = await service.cancel_job(engine, account, job_id, dagit_url=settings.dagit_base_url)
    await publish(event)
    return json_response(job)

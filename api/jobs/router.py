from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, status

from api.deps import CurrentAccount, EngineDep, PublisherDep, SettingsDep
from api.jobs import service
from api.jobs.schemas import JobCreate, JobPublic
from api.metrics import JOBS_SUBMITTED

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic, name="create")
async def create_job(
    body: JobCreate, account: CurrentAccount, engine: EngineDep, settings: SettingsDep, publish: PublisherDep
) -> JobPublic:
    """Submit a tile-inference job. Answers at once; a Dagster run is launched for it shortly after."""
    job, event = await service.create_job(
        engine, account, body, max_tiles=settings.max_tiles_per_job, dagit_url=settings.dagit_base_url
    )
    JOBS_SUBMITTED.inc()
    await publish(event)
    return job


@router.get("/{job_id}", response_model=JobPublic, name="get")
async def get_job(job_id: UUID, account: CurrentAccount, engine: EngineDep, settings: SettingsDep) -> JobPublic:
    """A job's state and progress."""
    return await service.get_job(engine, account, job_id, dagit_url=settings.dagit_base_url)


@router.post(
    "/{job_id}/cancel", response_model=JobPublic, name="cancel",
    responses={404: {"description": "No such job"}, 409: {"description": "The job has already ended"}},
)
async def cancel_job(
    job_id: UUID, account: CurrentAccount, engine: EngineDep, settings: SettingsDep, publish: PublisherDep
) -> JobPublic:
    """Cancel a queued or running job; its device is free again within one batch."""
    job, event = await service.cancel_job(engine, account, job_id, dagit_url=settings.dagit_base_url)
    await publish(event)
    return job

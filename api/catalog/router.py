"""GET /catalog: what a submission may choose — models, modes — and the defaults the API applies.
Clients (the dashboard's Submit page, scripts) read it rather than repeating the vocabulary."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import CurrentAccount
from api.jobs.schemas import JobMode
from constellation_core.vocabulary import DEFAULT_BATCH_SIZE, DEFAULT_MODE, DEFAULT_MODEL, JOB_MODES, MODELS

router = APIRouter(prefix="/catalog", tags=["catalog"])


class ModelPublic(BaseModel):
    name: str
    description: str


class Catalog(BaseModel):
    models: list[ModelPublic]
    modes: list[JobMode] = Field(description="`parallel`: every device at once; `serial`: one device")
    default_model: str
    default_mode: JobMode
    default_batch_size: int


@router.get("", response_model=Catalog, name="get")
async def catalog(account: CurrentAccount) -> Catalog:
    """The models a job may name, the modes, and the defaults of `POST /jobs`."""
    return Catalog(models=[ModelPublic(name=n, description=d) for n, d in MODELS.items()], modes=list(JOB_MODES),
                   default_model=DEFAULT_MODEL, default_mode=DEFAULT_MODE, default_batch_size=DEFAULT_BATCH_SIZE)

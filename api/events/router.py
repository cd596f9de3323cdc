"""GET /events: the durable event history (what the stream sends live), oldest first."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from sqlalchemy import select

from api.deps import CurrentAccount, EngineDep
from api.jobs.service import check_job_access
from api.pagination import DEFAULT_LIMIT, Limit, Page
from constellation_core.events import Event
from constellation_core.tables import events

router = APIRouter(prefix="/events", tags=["events"])


@router.get("", response_model=Page[Event], name="list")
async def list_events(
    account: CurrentAccount, engine: EngineDep,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="Only events with a larger id")] = 0,
    job_id: Annotated[UUID | None, Query(description="Only this job's events")] = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[Event]:
    """Events in id order (yours; admins: everyone's). `next_cursor` is the last id: pass it as `after`."""
    query = select(events).where(events.c.id > after).order_by(events.c.id).limit(limit + 1)
    if not account.is_admin:
        query = query.where(events.c.account_id == account.id)
    if job_id is not None:
        query = query.where(events.c.job_id == job_id)
    async with engine.connect() as conn:
        if job_id is not None:
            await check_job_access(conn, account, job_id)
        rows = (await conn.execute(query)).mappings().all()
    page = [Event.model_validate(dict(r)) for r in rows[:limit]]
    return Page[Event](data=page, next_cursor=str(page[-1].id) if len(rows) > limit else None)

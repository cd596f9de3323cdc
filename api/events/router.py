"""GET /events: the durable event history (what the stream sends live), oldest first."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from api import access
from api.deps import CurrentAccount, EngineDep
from api.events.service import history
from api.pagination import DEFAULT_LIMIT, Limit, Page
from constellation_core.events import Event, settled_event_id

router = APIRouter(prefix="/events", tags=["events"])
# A page waits at most this long for a transaction caught taking an event id (it takes microseconds).
SETTLE_WAIT_S = 2.0


@router.get("", response_model=Page[Event], name="list")
async def list_events(
    account: CurrentAccount, engine: EngineDep,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="Only events with a larger id")] = 0,
    job_id: Annotated[UUID | None, Query(description="Only this job's events")] = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[Event]:
    """Events in id order (yours; admins: everyone's). `next_cursor` is the last id: pass it as `after`.
    A page ends before any id whose transaction is still open, so polling with the last id seen as
    `after` never skips an event that committed after a later one."""
    async with engine.connect() as conn:
        if job_id is not None:
            await access.require_job(conn, account, job_id)
        found = await history(conn, account, after=after, job_id=job_id, limit=limit + 1,
                              until=await settled_event_id(conn, timeout_s=SETTLE_WAIT_S))
    page = found[:limit]
    return Page[Event](data=page, next_cursor=str(page[-1].id) if len(found) > limit else None)

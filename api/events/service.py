"""Event history and replay: one query for `GET /events`, the WebSocket stream and the SSE logs,
and the rule that a client gets each event once — history first, then live, no gap, no repeat.

A client subscribes to the hub *before* it reads history, so nothing committed meanwhile is missed;
then it drops every live event it already got from the history (`Delivered`). History is read up to
an id below which every event has settled: the hub's position for a stream (every later event comes
live), `settled_event_id` for a page of `GET /events`."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from api import access
from api.accounts.auth import Account
from constellation_core.events import Event
from constellation_core.tables import events


async def history(
    conn: AsyncConnection, account: Account, *, after: int, limit: int, job_id: UUID | None = None,
    jobs_only: bool = False, types: Collection[str] | None = None, until: int | None = None,
) -> list[Event]:
    """The events after id `after` (up to `until`) that the caller may see, oldest first: one job's
    (`job_id`), every job's (`jobs_only`) or all; only of `types` if given. The caller checks access
    to `job_id`. A caller that resumes from the last id it got passes as `until` an id up to which every
    event has settled (`settled_event_id`, or the stream hub's position): a smaller id that commits
    after a larger one is then never skipped."""
    query = select(events).where(events.c.id > after).order_by(events.c.id).limit(limit)
    if until is not None:
        query = query.where(events.c.id <= until)
    if (owner := access.owner_scope(account)) is not None:
        query = query.where(events.c.account_id == owner)
    if job_id is not None:
        query = query.where(events.c.job_id == job_id)
    elif jobs_only:
        query = query.where(events.c.job_id.is_not(None))
    if types is not None:
        query = query.where(events.c.type.in_(types))
    return [Event.model_validate(dict(row)) for row in (await conn.execute(query)).mappings()]


class Delivered:
    """The events one client was sent. `fresh`: not sent yet (from history, or another subscription
    on the same socket). `fresh_live`: also past the id the client resumed from — a live event at or
    below it was in the replayed history, or predates what the client asked for."""

    def __init__(self, after: int = 0, remember: int = 50_000) -> None:
        self.floor = after
        self.last = after
        self._ids: set[int] = set()
        self._order: deque[int] = deque()
        self._remember = remember

    def fresh(self, event: Event) -> bool:
        return event.id not in self._ids

    def fresh_live(self, event: Event) -> bool:
        return event.id > self.floor and self.fresh(event)

    def mark(self, event: Event) -> None:
        self._ids.add(event.id)
        self._order.append(event.id)
        if len(self._order) > self._remember:
            self._ids.discard(self._order.popleft())
        self.last = max(self.last, event.id)

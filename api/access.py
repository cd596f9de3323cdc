"""Who may see what: the one access policy. Every endpoint, the stream and the SSE logs ask it.

One rule per resource:
- **Owned rows** (jobs and everything of a job — detail, tiles, events, logs, stream topics —, areas,
  coverage tiles, analytics rows, usage): admins see every account's, a member only their own
  account's. A member who names another account's row gets 404, exactly as for a row that does
  not exist, so ids never leak.
- **Devices** (`/gpus`, telemetry, the stream's GPU samples): every account sees the devices and
  their figures; which job a device runs (its id and account) only admins and that job's owner.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from api.accounts.auth import Account
from api.errors import NotFound
from constellation_core.tables import jobs
from constellation_core.telemetry import GpuSample


def owner_scope(account: Account) -> UUID | None:
    """The account whose rows this caller's listings show: None (every account's) for admins."""
    return None if account.is_admin else account.id


def may_see(account: Account, owner_id: UUID | None) -> bool:
    """The rule for owned rows."""
    return account.is_admin or (owner_id is not None and owner_id == account.id)


def require(account: Account, owner_id: UUID | None, exists: bool, what: str, ident: object) -> None:
    """404 (as if absent) unless the row exists and the caller may see it."""
    if not exists or not may_see(account, owner_id):
        raise NotFound(f"no {what} with id {ident}")


async def require_job(conn: AsyncConnection, account: Account, job_id: UUID) -> None:
    """404 unless the job exists and the caller may see it (one query)."""
    found = (await conn.execute(select(jobs.c.account_id).where(jobs.c.id == job_id))).first()
    require(account, found.account_id if found else None, found is not None, "job", job_id)


def device_sample(account: Account, sample: GpuSample) -> GpuSample:
    """A device's telemetry sample as this caller may see it: the job it ran only for its owner."""
    if sample.job_id is None or may_see(account, sample.account_id):
        return sample
    return sample.model_copy(update={"job_id": None, "account_id": None})

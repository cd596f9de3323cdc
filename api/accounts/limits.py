"""Per-account limits: what one member may ask of the shared fleet.

Members get the defaults below unless an operator overrides them for their account
(`PATCH /admin/accounts/{id}` with `limits`, stored in `accounts.limits`); admins have none. Over a
limit, a request is refused with the reason: a priority above the account's highest is 422 (the
request itself is wrong); too much already queued or running, or too many open streams, is 429 (it
may work later) with `Retry-After`. Counting is per request, without a lock: concurrent submissions
may pass a limit by the number in flight at once.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.errors import Problem


class AccountLimits(BaseModel):
    """An account's effective limits (null: no limit)."""

    model_config = ConfigDict(frozen=True)
    max_priority: int | None = Field(default=None, description="The highest job priority it may ask for")
    max_active_jobs: int | None = Field(default=None, description="Jobs it may have queued or running at once")
    max_active_tiles: int | None = Field(default=None, description="Tiles of its queued or running jobs, not yet done")
    max_streams: int | None = Field(default=None, description="WebSocket and SSE streams it may hold open at once "
                                    "(per API process)")


class LimitsUpdate(BaseModel):
    """Overrides for one account: a number sets it, null goes back to the default."""

    model_config = ConfigDict(extra="forbid")
    max_priority: int | None = Field(default=None, ge=-100, le=100)
    max_active_jobs: int | None = Field(default=None, ge=0, le=1_000_000)
    max_active_tiles: int | None = Field(default=None, ge=0, le=1_000_000_000)
    max_streams: int | None = Field(default=None, ge=0, le=100_000)


MEMBER_DEFAULTS = AccountLimits(max_priority=10, max_active_jobs=100, max_active_tiles=200_000, max_streams=20)
UNLIMITED = AccountLimits()


def effective(role: str, overrides: dict[str, Any] | None) -> AccountLimits:
    """The defaults of the role, with the account's overrides on top."""
    base = UNLIMITED if role == "admin" else MEMBER_DEFAULTS
    known = {k: v for k, v in (overrides or {}).items() if k in AccountLimits.model_fields}
    return base.model_copy(update=known)


class TooManyRequests(Problem):
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after_s: int = 10) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})

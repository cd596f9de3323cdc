"""/usage: the Go usage service (usage_go), served from the API's origin.

The API authenticates the caller and forwards the request; usage_go reads Postgres and aggregates.
Members read their own account's usage (admins anyone's). The leaderboard shows admins every account;
a member sees their own row and rank only (other tenants' names and usage are not theirs to see).
usage_go authenticates the caller's key itself (forwarded) and applies the same rule: it answers no one
without a key, whoever reaches its port.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

import httpx
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from api import access
from api.deps import CurrentAccount
from api.errors import ServiceUnavailable

router = APIRouter(prefix="/usage", tags=["usage"])

Window = Literal["day", "week", "month", "all"]
Metric = Literal["gpu_seconds", "tiles", "jobs", "energy"]


class Usage(BaseModel):
    account_id: UUID
    account_name: str
    window: Window
    jobs: int
    tiles: int
    gpu_seconds: float = Field(json_schema_extra={"format": "double"})
    energy_joules: float = Field(json_schema_extra={"format": "double"})
    rank: int | None = Field(default=None, description="On the leaderboard: the position (1 = the most); absent "
                             "for a member's own row beyond the first 100 accounts")


class Leaderboard(BaseModel):
    data: list[Usage]
    metric: Metric
    window: Window


# The caller's own key goes on to usage_go, which authenticates it and applies the same rule.
FORWARDED = ("authorization", "x-api-key", "traceparent", "x-request-id")


async def _fetch(request: Request, path: str, params: dict) -> httpx.Response:
    client: httpx.AsyncClient = request.app.state.usage_client
    headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
    try:
        upstream = await client.get(path, params=params, headers=headers)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"the usage service is unreachable ({type(exc).__name__}); try again shortly") from exc
    if upstream.status_code >= 500:
        raise ServiceUnavailable(f"the usage service failed ({upstream.status_code}); try again shortly")
    return upstream


async def _forward(request: Request, path: str, params: dict) -> Response:
    upstream = await _fetch(request, path, params)
    return Response(upstream.content, status_code=upstream.status_code,
                    media_type=upstream.headers.get("content-type", "application/json"))


@router.get("/accounts/{account_id}", response_model=Usage, name="account",
            responses={503: {"description": "The usage service is unreachable"}})
async def account_usage(
    account_id: UUID, request: Request, account: CurrentAccount, window: Annotated[Window, Query()] = "all",
) -> Response:
    """GPU-seconds, tiles, jobs and energy of one account over a window."""
    access.require(account, account_id, True, "account", account_id)
    return await _forward(request, f"/usage/accounts/{account_id}", {"window": window})


@router.get("/leaderboard", response_model=Leaderboard, name="leaderboard",
            responses={503: {"description": "The usage service is unreachable"}})
async def leaderboard(
    request: Request, account: CurrentAccount, window: Annotated[Window, Query()] = "all",
    metric: Annotated[Metric, Query()] = "gpu_seconds", limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Response:
    """The accounts that used the most, by a metric, over a window, each with its rank. A member gets their
    own row only (usage_go applies the rule)."""
    return await _forward(request, "/usage/leaderboard", {"window": window, "metric": metric, "limit": limit})

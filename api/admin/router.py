"""/admin: operators manage accounts and API keys (admin role only).

Create and disable accounts, change roles; issue keys (the plain key is in the answer once, only its
hash is stored), list them (prefix, label, created, last used, revoked) and revoke them. Revoking a key
or disabling an account takes effect at once in every API process: their caches of valid keys forget
it and every open WebSocket and SSE stream that uses it is closed with the reason (`Revocation`
messages on NATS). `constellation admin …` is the command line for these routes.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Text, func, insert, select, update
from sqlalchemy.dialects.postgresql import array as sa_array
from sqlalchemy.exc import IntegrityError

from api.accounts.auth import REVOCATION_SUBJECT, Account, Revocation
from api.accounts.limits import AccountLimits, LimitsUpdate, effective
from api.deps import CurrentAccount, EngineDep
from api.errors import Conflict, Forbidden, NotFound
from constellation_core.accounts import hash_api_key, new_api_key
from constellation_core.tables import accounts, api_keys

log = logging.getLogger(__name__)

Role = Literal["admin", "member"]


async def _admin(account: CurrentAccount) -> Account:
    if not account.is_admin:
        raise Forbidden("managing accounts and keys needs an admin key")
    return account


AdminAccount = Annotated[Account, Depends(_admin)]
router = APIRouter(prefix="/admin", tags=["admin"], responses={403: {"description": "The key is not an admin's"}})
TAKEN = {409: {"description": "The name is taken, or an admin would lock themselves out"}}


class AccountAdmin(BaseModel):
    id: UUID
    name: str
    role: Role
    created_at: datetime
    disabled_at: datetime | None = Field(description="Set while the account is disabled")
    active_keys: int = Field(description="Keys that are not revoked")
    limits: AccountLimits = Field(description="Its effective limits (the role's defaults and its overrides)")
    limit_overrides: LimitsUpdate = Field(description="What an operator set for it (null: the default)")


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="Unique; letters, digits, '.', '_' and '-'")
    role: Role = "member"


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disabled: bool | None = Field(default=None, description="true: its keys stop working and its streams close")
    role: Role | None = None
    limits: LimitsUpdate | None = Field(default=None, description="Overrides to set (the fields given; null: back "
                                        "to the default). Applied within 10 s (the API's key cache)")


class KeyPublic(BaseModel):
    id: UUID
    account_id: UUID
    name: str | None
    prefix: str = Field(description="The key's first characters, to tell keys apart")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyIssued(KeyPublic):
    key: str = Field(description="The key itself: shown this once, never again")


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=64, description="A label, e.g. 'ci' or 'laptop'")


def _account_query():
    active = (select(func.count()).where(api_keys.c.account_id == accounts.c.id, api_keys.c.revoked_at.is_(None))
              .scalar_subquery())
    return select(accounts.c.id, accounts.c.name, accounts.c.role, accounts.c.created_at, accounts.c.disabled_at,
                  accounts.c.limits, active.label("active_keys"))


def _public(row) -> AccountAdmin:
    return AccountAdmin(**{**row, "limits": effective(row["role"], row["limits"]),
                           "limit_overrides": LimitsUpdate(**row["limits"])})


KEY_COLUMNS = (api_keys.c.id, api_keys.c.account_id, api_keys.c.name, api_keys.c.prefix, api_keys.c.created_at,
               api_keys.c.last_used_at, api_keys.c.revoked_at)
AccountId = Annotated[UUID, Path(description="The account's id")]


async def _announce(request: Request, revocation: Revocation) -> None:
    """Every API process (this one first, so it holds even with NATS down) ends the streams of these keys."""
    ended = request.app.state.hub.revoke(revocation)
    try:
        await request.app.state.nats.publish(REVOCATION_SUBJECT, revocation.to_bytes())
        await request.app.state.nats.flush(timeout=2)
    except Exception:  # noqa: BLE001 - this process has applied it; the others' caches expire within seconds
        log.warning("could not announce a revocation on NATS", exc_info=True)
    log.info("keys revoked", extra={"key_ids": sorted(map(str, revocation.key_ids)),
                                    "account_ids": sorted(map(str, revocation.account_ids)), "streams_ended": ended})


@router.get("/accounts", response_model=list[AccountAdmin], name="list_accounts")
async def list_accounts(admin: AdminAccount, engine: EngineDep) -> list[AccountAdmin]:
    """Every account, oldest first."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_account_query().order_by(accounts.c.created_at, accounts.c.name))).mappings()
        return [_public(row) for row in rows]


@router.post("/accounts", status_code=status.HTTP_201_CREATED, response_model=AccountAdmin, name="create_account",
             responses=TAKEN)
async def create_account(body: AccountCreate, admin: AdminAccount, engine: EngineDep) -> AccountAdmin:
    """A new account (no key yet: issue one with `POST /admin/accounts/{id}/keys`)."""
    try:
        async with engine.begin() as conn:
            account_id = (await conn.execute(insert(accounts).values(name=body.name, role=body.role)
                                             .returning(accounts.c.id))).scalar_one()
            row = (await conn.execute(_account_query().where(accounts.c.id == account_id))).mappings().one()
    except IntegrityError:
        raise Conflict(f"an account named {body.name!r} already exists") from None
    log.info("account created", extra={"account": body.name, "role": body.role, "by": admin.name})
    return _public(row)


@router.patch("/accounts/{account_id}", response_model=AccountAdmin, name="update_account", responses=TAKEN)
async def update_account(account_id: AccountId, body: AccountUpdate, admin: AdminAccount, engine: EngineDep,
                         request: Request) -> AccountAdmin:
    """Disable (its keys stop working at once and its streams close) or enable an account, or change its role."""
    if account_id == admin.id and (body.disabled or body.role == "member"):
        raise Conflict("an admin cannot disable or demote their own account (another admin can)")
    values: dict = {}
    if body.disabled is not None:
        values["disabled_at"] = func.coalesce(accounts.c.disabled_at, func.now()) if body.disabled else None
    if body.role is not None:
        values["role"] = body.role
    if body.limits is not None:
        given = body.limits.model_dump(exclude_unset=True)
        dropped = [name for name, value in given.items() if value is None]
        merged = accounts.c.limits.op("||")(func.jsonb_build_object(*[
            part for name, value in given.items() if value is not None for part in (name, value)]))
        values["limits"] = merged.op("-")(sa_array(dropped, type_=Text)) if dropped else merged
    async with engine.begin() as conn:
        if values:
            found = await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values)
                                       .returning(accounts.c.id))
        else:
            found = await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))
        if found.first() is None:
            raise NotFound(f"no account with id {account_id}")
        row = (await conn.execute(_account_query().where(accounts.c.id == account_id))).mappings().one()
    if body.disabled or body.role is not None:
        # A disabled account's streams end; a role change ends them too (they were opened with the old rights).
        reason = "the account was disabled" if body.disabled else "the account's role changed; reconnect"
        await _announce(request, Revocation(account_ids=frozenset({account_id}), reason=reason))
    log.info("account updated", extra={"account_id": str(account_id), "by": admin.name,
                                       "disabled": body.disabled, "role": body.role})
    return _public(row)


@router.get("/accounts/{account_id}/keys", response_model=list[KeyPublic], name="list_keys")
async def list_keys(account_id: AccountId, admin: AdminAccount, engine: EngineDep) -> list[KeyPublic]:
    """The account's keys, newest first (never the keys themselves)."""
    async with engine.connect() as conn:
        if (await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))).first() is None:
            raise NotFound(f"no account with id {account_id}")
        rows = (await conn.execute(select(*KEY_COLUMNS).where(api_keys.c.account_id == account_id)
                                   .order_by(api_keys.c.created_at.desc()))).mappings()
        return [KeyPublic(**row) for row in rows]


@router.post("/accounts/{account_id}/keys", status_code=status.HTTP_201_CREATED, response_model=KeyIssued,
             name="issue_key")
async def issue_key(account_id: AccountId, admin: AdminAccount, engine: EngineDep,
                    body: KeyCreate | None = None) -> KeyIssued:
    """A new key for the account. The answer is the only place the key ever appears: store it now."""
    key = new_api_key()
    async with engine.begin() as conn:
        if (await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))).first() is None:
            raise NotFound(f"no account with id {account_id}")
        row = (await conn.execute(
            insert(api_keys).values(account_id=account_id, key_hash=hash_api_key(key), prefix=key[:8],
                                    name=body.name if body else None).returning(*KEY_COLUMNS)
        )).mappings().one()
    log.info("key issued", extra={"account_id": str(account_id), "key_id": str(row["id"]), "by": admin.name})
    return KeyIssued(**row, key=key)


@router.post("/keys/{key_id}/revoke", response_model=KeyPublic, name="revoke_key")
async def revoke_key(key_id: Annotated[UUID, Path(description="The key's id")], admin: AdminAccount,
                     engine: EngineDep, request: Request) -> KeyPublic:
    """Revoke a key: it stops working at once, and its open streams close with the reason. Idempotent."""
    async with engine.begin() as conn:
        row = (await conn.execute(
            update(api_keys).where(api_keys.c.id == key_id)
            .values(revoked_at=func.coalesce(api_keys.c.revoked_at, func.now())).returning(*KEY_COLUMNS)
        )).mappings().first()
    if row is None:
        raise NotFound(f"no key with id {key_id}")
    await _announce(request, Revocation(key_ids=frozenset({key_id})))
    return KeyPublic(**row)

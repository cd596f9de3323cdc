"""API-key authentication: keys are stored as SHA-256 hashes and shown once at creation."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.accounts.limits import UNLIMITED, AccountLimits, effective
from api.errors import Unauthorized
from constellation_core.accounts import hash_api_key
from constellation_core.events import SUBJECT_ROOT
from constellation_core.tables import accounts, api_keys


@dataclass(frozen=True)
class Account:
    id: UUID
    name: str
    role: str
    key_id: UUID | None = None  # the key this request authenticated with
    limits: AccountLimits = UNLIMITED  # what it may ask of the fleet (api/accounts/limits.py)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


# Valid keys are remembered briefly, so a busy client costs no query per request. Revoking a key or
# disabling an account forgets it at once in every API process (api/admin/router.py `_announce`); without that
# message a revoked key would stop working within KEY_CACHE_S. Unknown keys are never cached.
KEY_CACHE_S = 10.0
KEY_CACHE_MAX = 10_000
_valid_keys: dict[str, tuple[float, Account]] = {}

# API processes tell each other (and their own stream hubs) that keys stopped working. Never fanned out
# to clients.
REVOCATION_SUBJECT = f"{SUBJECT_ROOT}.auth.revoked"


async def authenticate(engine: AsyncEngine, key: str | None) -> Account:
    if not key:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    key_hash = hash_api_key(key)
    cached = _valid_keys.get(key_hash)
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    query = (
        select(accounts.c.id, accounts.c.name, accounts.c.role, accounts.c.limits, api_keys.c.id.label("key_id"))
        .join(api_keys, api_keys.c.account_id == accounts.c.id)
        .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None), accounts.c.disabled_at.is_(None))
    )
    async with engine.begin() as conn:
        row = (await conn.execute(query)).first()
        if row is not None:
            await conn.execute(update(api_keys).where(api_keys.c.id == row.key_id).values(last_used_at=func.now()))
    if row is None:
        _valid_keys.pop(key_hash, None)
        raise Unauthorized("the API key is not valid (unknown, revoked, or its account is disabled)")
    account = Account(id=row.id, name=row.name, role=row.role, key_id=row.key_id,
                      limits=effective(row.role, row.limits))
    if len(_valid_keys) >= KEY_CACHE_MAX:
        _valid_keys.clear()
    _valid_keys[key_hash] = (now + KEY_CACHE_S, account)
    return account


@dataclass(frozen=True)
class Revocation:
    """Keys that stopped working: these keys, or every key of these accounts."""

    key_ids: frozenset[UUID] = frozenset()
    account_ids: frozenset[UUID] = frozenset()
    reason: str = "the API key was revoked"

    def covers(self, account: Account) -> bool:
        return account.key_id in self.key_ids or account.id in self.account_ids

    def to_bytes(self) -> bytes:
        return json.dumps({"key_ids": sorted(map(str, self.key_ids)),
                           "account_ids": sorted(map(str, self.account_ids)), "reason": self.reason}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Revocation:
        body = json.loads(data)
        return cls(frozenset(map(UUID, body.get("key_ids", []))), frozenset(map(UUID, body.get("account_ids", []))),
                   str(body.get("reason", "the API key was revoked"))[:120])


def forget(revocation: Revocation) -> None:
    """Drop revoked keys from this process's cache of valid keys."""
    for key_hash, (_, account) in list(_valid_keys.items()):
        if revocation.covers(account):
            _valid_keys.pop(key_hash, None)


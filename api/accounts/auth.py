"""API-key authentication: keys are stored as SHA-256 hashes and shown once at creation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import Unauthorized
from constellation_core.accounts import hash_api_key
from constellation_core.tables import accounts, api_keys


@dataclass(frozen=True)
class Account:
    id: UUID
    name: str
    role: str

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


# Valid keys are remembered briefly, so a busy client costs no query per request; a revoked key
# stops working within KEY_CACHE_S. Unknown keys are never cached (each try is checked).
KEY_CACHE_S = 10.0
KEY_CACHE_MAX = 10_000
_valid_keys: dict[str, tuple[float, Account]] = {}


async def authenticate(engine: AsyncEngine, key: str | None) -> Account:
    if not key:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    key_hash = hash_api_key(key)
    cached = _valid_keys.get(key_hash)
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    query = (
        select(accounts.c.id, accounts.c.name, accounts.c.role)
        .join(api_keys, api_keys.c.account_id == accounts.c.id)
        .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        _valid_keys.pop(key_hash, None)
        raise Unauthorized("the API key is not valid")
    account = Account(id=row.id, name=row.name, role=row.role)
    if len(_valid_keys) >= KEY_CACHE_MAX:
        _valid_keys.clear()
    _valid_keys[key_hash] = (now + KEY_CACHE_S, account)
    return account

"""API-key authentication: keys are stored as SHA-256 hashes and shown once at creation."""

from __future__ import annotations

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


async def authenticate(engine: AsyncEngine, key: str | None) -> Account:
    if not key:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    query = (
        select(accounts.c.id, accounts.c.name, accounts.c.role)
        .join(api_keys, api_keys.c.account_id == accounts.c.id)
        .where(api_keys.c.key_hash == hash_api_key(key), api_keys.c.revoked_at.is_(None))
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        raise Unauthorized("the API key is not valid")
    return Account(id=row.id, name=row.name, role=row.role)

"""Accounts and API keys (stored as SHA-256 hashes; the plain key is shown once)."""

from __future__ import annotations

import hashlib
import secrets
from uuid import UUID

from sqlalchemy import Connection, insert, select

from constellation_core.tables import accounts, api_keys

KEY_PREFIX = "cst_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # Keys are 256-bit random secrets, so a fast hash suffices and lookups stay one index probe.
    return hashlib.sha256(key.encode()).hexdigest()


def create_account(conn: Connection, name: str, role: str = "member") -> UUID:
    return conn.execute(insert(accounts).values(name=name, role=role).returning(accounts.c.id)).scalar_one()


def issue_api_key(conn: Connection, account_id: UUID, key: str | None = None) -> str:
    """Store a (new, unless given) key for the account and return it in plain text."""
    key = key or new_api_key()
    conn.execute(insert(api_keys).values(account_id=account_id, key_hash=hash_api_key(key), prefix=key[:8]))
    return key


def account_id_by_name(conn: Connection, name: str) -> UUID | None:
    return conn.execute(select(accounts.c.id).where(accounts.c.name == name)).scalar_one_or_none()

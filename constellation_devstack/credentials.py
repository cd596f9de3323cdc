"""Passwords the local stack makes for itself: random, made once, kept in a 0600 JSON file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path


def passwords(path: Path, names: Iterable[str]) -> dict[str, str]:
    """The password of each of `names` from `path`, making (and saving) any that is missing.

    URL-safe characters only, so a password can sit in a connection URL as it is."""
    names = list(names)
    known = json.loads(path.read_text()) if path.exists() else {}
    if not set(names) <= set(known):
        path.parent.mkdir(parents=True, exist_ok=True)
        known = {**known, **{name: secrets.token_urlsafe(24) for name in names if not known.get(name)}}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(known, out)
    return {name: known[name] for name in names}


SCRAM_ITERATIONS = 4096  # Postgres's default (RFC 7677's minimum)


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 secret of `password` (RFC 5802/7677), in the form Postgres stores in
    `pg_authid` and PgBouncer reads from its auth file: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.

    Always the same for one password (its salt is derived from it; our passwords are random, 192 bits),
    so a role's secret set on the server (`postgres.ensure_login_roles`) and the one PgBouncer holds
    match. With the secret, not the password, PgBouncer checks a client's proof without deriving keys
    (~3 ms of its CPU per login, the PBKDF2 of 4096 rounds) and logs in upstream with the client's own
    proof (SCRAM pass-through); and no password sits in its auth file."""
    salt = hmac.digest(password.encode(), b"constellation scram salt", "sha256")[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"

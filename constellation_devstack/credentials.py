"""Passwords the local stack makes for itself: random, made once, kept in a 0600 JSON file."""

from __future__ import annotations

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

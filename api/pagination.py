"""Opaque keyset cursors and the `{data, next_cursor}` page shape shared by list endpoints."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from api.errors import InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page")]
Cursor = Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page")]


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, arity: int | None) -> list[Any] | None:
    """The cursor's values (`arity` of them, or any number when None); a 422 problem for anything
    this API did not hand out."""
    if cursor is None:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        values = None
    if not isinstance(values, list) or not values or (arity is not None and len(values) != arity):
        raise InvalidInput("malformed cursor: pass back the `next_cursor` of a previous page",
                           errors=[{"loc": ["query", "cursor"], "msg": "malformed cursor", "type": "cursor"}])
    return values

"""Responses that carry GeoJSON text as PostGIS or a planning process wrote it.

An area may be megabytes of coordinates: `json.loads` of its text and pydantic serializing it again
cost the event loop ~50 ms per megabyte here, for a page of jobs many times that, stalling every other
request. These helpers serialize a response model without such fields and splice the fields' JSON text
in unchanged; the result is the same JSON object (its keys in another order).
"""

from __future__ import annotations

import json

from fastapi import Response
from pydantic import BaseModel


def with_json_fields(model: BaseModel, **texts: str) -> bytes:
    """`model` as JSON, the fields named in `texts` being those JSON texts as they are."""
    head = model.model_dump_json(exclude=set(texts))
    tail = "".join(f',"{name}":{text}' for name, text in texts.items())
    return (f"{head[:-1]}{tail}}}" if head != "{}" else "{" + tail[1:] + "}").encode()


def page_json(items: list[bytes], next_cursor: str | None) -> bytes:
    """The JSON of an `api.pagination.Page` whose items are already JSON."""
    return b'{"data":[' + b",".join(items) + b'],"next_cursor":' + json.dumps(next_cursor).encode() + b"}"


def json_response(content: bytes, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content, status_code=status_code, headers=headers, media_type="application/json")

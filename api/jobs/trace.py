"""A job's trace, read from the trace store's query API (Jaeger's `/api/traces/{id}`).

The job keeps the W3C context of the request that submitted it (`jobs.traceparent`); every span of
the job joined that trace, so its id finds them all. Access is the job's: a member reads only their
own jobs' traces.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.accounts.auth import Account
from api.errors import NotFound, ServiceUnavailable
from api.jobs.schemas import JobTrace, TraceSpan
from api.jobs.service import visible
from constellation_core.tables import jobs
from constellation_core.tracing import trace_id_of


async def job_trace(engine: AsyncEngine, client: httpx.AsyncClient, account: Account, job_id: UUID) -> JobTrace:
    async with engine.connect() as conn:
        row = (await conn.execute(select(jobs.c.id, jobs.c.account_id, jobs.c.traceparent)
                                  .where(jobs.c.id == job_id))).mappings().first()
    row = visible(row, account, job_id)
    trace_id = trace_id_of(row["traceparent"])
    if trace_id is None:
        raise NotFound("this job has no trace: tracing was off when it was submitted")
    try:
        response = await client.get(f"/api/traces/{trace_id}")
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"the trace store did not answer ({type(exc).__name__}); try again shortly") from exc
    if response.status_code == 404:
        raise NotFound(f"the trace store has no spans of trace {trace_id} (yet: spans arrive within seconds; "
                       "or no longer: it keeps a bounded number of traces)")
    if response.status_code != 200:
        raise ServiceUnavailable(f"the trace store answered {response.status_code}; try again shortly")
    return from_jaeger(trace_id, response.json())


def from_jaeger(trace_id: str, body: dict) -> JobTrace:
    """Jaeger's trace JSON (`data[0]`: spans with references, tags and a process each) as a `JobTrace`."""
    found = (body.get("data") or [{}])[0]
    processes = found.get("processes") or {}
    raw = sorted(found.get("spans") or [], key=lambda s: (s["startTime"], s["spanID"]))
    if not raw:
        raise NotFound(f"the trace store has no spans of trace {trace_id} yet")
    first = raw[0]["startTime"]
    last = max(s["startTime"] + s["duration"] for s in raw)
    spans = []
    for span in raw:
        tags = {t["key"]: t["value"] for t in span.get("tags") or []}
        parent = next((r["spanID"] for r in span.get("references") or [] if r.get("refType") == "CHILD_OF"), None)
        spans.append(TraceSpan(
            span_id=span["spanID"], parent_id=parent, name=span["operationName"],
            service=(processes.get(span.get("processID")) or {}).get("serviceName", "unknown"),
            start_ms=(span["startTime"] - first) / 1000, duration_ms=span["duration"] / 1000,
            error=tags.get("error") is True or tags.get("otel.status_code") == "ERROR",
            attributes={k: v for k, v in tags.items() if isinstance(v, str | int | float | bool)
                        and not k.startswith(("otel.", "span.kind", "internal."))},
        ))
    return JobTrace(trace_id=trace_id, started_at=datetime.fromtimestamp(first / 1e6, UTC),
                    duration_ms=(last - first) / 1000, spans=spans)

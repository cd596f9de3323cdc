"""Range queries against the stack's Prometheus, for the dashboard's history charts.

The API asks only its own fixed PromQL (clients choose a named series and a time span, never an
expression), with a step that keeps every answer under `MAX_POINTS` points per series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import httpx

from api.errors import ServiceUnavailable

MAX_POINTS = 400
MIN_STEP_S = 5  # the stack's scrape interval (constellation_devstack/prometheus.py): finer steps repeat points


def step_for(seconds: int) -> int:
    """Seconds between points for a span of `seconds`: at least the scrape interval, at most MAX_POINTS points."""
    return max(MIN_STEP_S, math.ceil(seconds / MAX_POINTS))


def label_value(text: str) -> str:
    """`text` as a PromQL string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@dataclass
class RangeSeries:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (unix seconds, value), oldest first; NaN and ±Inf left out


async def query_range(client: httpx.AsyncClient, expr: str, start: datetime, end: datetime,
                      step_s: int) -> list[RangeSeries]:
    """Prometheus's answer to `expr` from `start` to `end`; 503 when it cannot answer."""
    try:
        response = await client.get("/api/v1/query_range", params={
            "query": expr, "start": start.timestamp(), "end": end.timestamp(), "step": step_s})
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(
            f"the metrics store (Prometheus) did not answer ({type(exc).__name__}); try again shortly") from exc
    if response.status_code != 200:
        raise ServiceUnavailable(f"the metrics store (Prometheus) answered {response.status_code}; try again shortly")
    result = []
    for series in response.json()["data"]["result"]:
        points = [(float(ts), float(value)) for ts, value in series["values"]]
        result.append(RangeSeries(series["metric"], [(ts, v) for ts, v in points if math.isfinite(v)]))
    return result

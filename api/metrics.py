"""The API's Prometheus series."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("constellation_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "constellation_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JOBS_SUBMITTED = Counter("constellation_jobs_submitted_total", "Jobs accepted by POST /jobs")
STREAM_CLIENTS = Gauge("constellation_stream_clients", "Connected WebSocket stream clients")
# Read from Postgres when scraped (every API process sees the same figures; the job table is the truth).
JOBS_BY_STATE = Gauge("constellation_jobs", "Jobs in each state, all accounts", ["state"])
STREAM_DROPPED = Counter("constellation_stream_clients_dropped_total", "Stream clients dropped for being too slow")
EVENT_LAG = Histogram(
    "constellation_stream_event_lag_seconds", "An event's commit (its `ts`) to its send on a live WebSocket",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
NATS_PUBLISH_FAILURES = Counter("constellation_nats_publish_failures_total",
                                "Events the API could not publish to NATS (stream clients resume from Postgres)")

"""OpenTelemetry tracing for the stack's Python processes: one trace per job.

A job's trace starts with the request that submitted it; its W3C context (`traceparent`) is stored
with the job (`jobs.traceparent`), so whatever later works on the job — the dispatcher, the Dagster
run and its ops, the device workers' batches, the sensor that ends it — adds its spans to that trace
(`span_of_job`), however long the job waited and whichever process or machine does the work.

Configured with the standard variables: tracing is on when an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the local stack points them at
its Jaeger) and `OTEL_SDK_DISABLED` is not `true`; `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES` and the exporter's `OTEL_EXPORTER_OTLP_*` work as the SDK documents. Off,
every call here costs next to nothing (the API's no-op tracer).

Spans go out in the background (`BatchSpanProcessor`); a process that ends with `os._exit` (a run
worker) calls `flush` first. Never set up in a process that forks workers (the run-worker zygote): the
exporter's thread would be copied mid-work; the forked child sets up its own.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

tracer = trace.get_tracer("constellation")
_lock = threading.Lock()
_provider = None


def enabled_by_environment() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true" and bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


# What `setup` imports: the OTLP exporter pulls in `requests` (urllib3, idna, charset_normalizer, the
# protobuf encoders) when it is built. A process that forks short-lived workers imports them once
# (`preload`): a run worker forked from the zygote spent ~0.2 s of CPU importing them for every run.
EXPORT_MODULES = ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.sdk.resources",
                  "opentelemetry.sdk.trace", "opentelemetry.sdk.trace.export", "requests")


def preload() -> None:
    """Import what `setup` will need, without setting anything up (safe before a fork)."""
    if enabled_by_environment():
        for module in EXPORT_MODULES:
            importlib.import_module(module)


def setup(service: str) -> bool:
    """Install this process's tracer provider (once): spans exported over OTLP/HTTP, `service` as
    `service.name` unless `OTEL_SERVICE_NAME` says otherwise. False when tracing is off."""
    global _provider
    with _lock:
        if _provider is not None:
            return True
        if not enabled_by_environment():
            return False
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = _resource_hashed_once(Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                                          or service}))
        provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider = provider
        return True


def _resource_hashed_once(resource):
    """The same resource, hashed once rather than for every span exported: the OTLP encoder groups
    spans by resource, and `Resource.__hash__` JSON-encodes its attributes each time (two thirds of
    the export thread's CPU in a profile of the API under `POST /jobs`). Its attributes cannot change."""
    from opentelemetry.sdk.resources import Resource

    class HashedOnce(Resource):
        def __init__(self, attributes, schema_url=None) -> None:
            super().__init__(attributes, schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return self._hash

    return HashedOnce(resource.attributes, resource.schema_url)


def active() -> bool:
    """Whether this process exports spans (`setup` found an OTLP endpoint)."""
    return _provider is not None


def flush(timeout_s: float = 5.0) -> None:
    """Send the spans still buffered (before an `os._exit`)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span (None when nothing is traced)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def current_span_id() -> str | None:
    """The 16-hex id of the span this process records now (None outside one, or when nothing is traced)."""
    span = trace.get_current_span()
    context = span.get_span_context()
    return format(context.span_id, "016x") if span.is_recording() and context.is_valid else None


def context_from(traceparent: str | None) -> Context:
    return propagate.extract({"traceparent": traceparent} if traceparent else {})


def inject_into(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context to outgoing headers (NATS messages, HTTP calls)."""
    propagate.inject(headers)
    return headers


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id in a `traceparent` (`00-<trace id>-<span id>-<flags>`)."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _nanos(at: datetime | float | None) -> int | None:
    if at is None:
        return None
    return int((at.timestamp() if isinstance(at, datetime) else at) * 1e9)


def _attributes(job_id: object, attributes: Mapping[str, object] | None) -> dict[str, object]:
    found = {"constellation.job.id": job_id, **(attributes or {})}
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in found.items() if v is not None}


@contextmanager
def span_of_job(name: str, traceparent: str | None, *, job_id: object = None, kind: SpanKind = SpanKind.INTERNAL,
                attributes: Mapping[str, object] | None = None,
                start: datetime | float | None = None) -> Iterator[Span]:
    """A span in a job's trace (a child of the span `traceparent` names, else of the current span),
    current while the block runs; an exception escaping the block marks it failed. `start` backdates
    it (a wait that began before this process knew of it, such as the job's time in the queue)."""
    with tracer.start_as_current_span(name, context=context_from(traceparent) if traceparent else None, kind=kind,
                                      attributes=_attributes(job_id, attributes), start_time=_nanos(start),
                                      record_exception=True, set_status_on_exception=True) as span:
        yield span


def mark_failed(span: Span, exc: BaseException) -> None:
    """Mark a span failed by an exception its block handled (the block goes on, the span says why)."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:1000]))


def record_span(name: str, traceparent: str | None, start: datetime | float, end: datetime | float, *,
                job_id: object = None, kind: SpanKind = SpanKind.INTERNAL,
                attributes: Mapping[str, object] | None = None, error: str | None = None) -> None:
    """A finished span from recorded times (a batch, timed where it ran)."""
    span = tracer.start_span(name, context=context_from(traceparent) if traceparent else None, kind=kind,
                             attributes=_attributes(job_id, attributes),
                             start_time=_nanos(start))
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=_nanos(end))

"""The API's Postgres spans: one client span per statement, inside the request's trace (FastAPI
makes the server span of each request itself: `telemetry=` in `api.main`).

Lean on purpose: OpenTelemetry's SQLAlchemy instrumentation adds a span per pool checkout and the
full SQL text to every query span (the submission's statement is 1.5 KB), and its version check
refuses SQLAlchemy 2.1. This records what a job's trace needs — which statement ran, for how long,
whether it failed — with the semantic conventions' attribute names.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import Engine, event

tracer = trace.get_tracer("constellation.api")


def trace_queries(engine: Engine, database: str | None) -> None:
    """A client span per statement `engine` runs (named by its first keyword), in the current trace."""
    attributes = {"db.system": "postgresql", **({"db.name": database} if database else {})}

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn, cursor, statement, parameters, context, executemany) -> None:
        if not trace.get_current_span().get_span_context().is_valid:
            return  # a query outside any request (start-up, the hub's backfill): no trace to join
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        context._constellation_span = tracer.start_span(
            operation, kind=SpanKind.CLIENT, attributes={**attributes, "db.operation.name": operation})

    @event.listens_for(engine, "after_cursor_execute")
    def _end(conn, cursor, statement, parameters, context, executemany) -> None:
        span = getattr(context, "_constellation_span", None)
        if span is not None:
            span.end()

    @event.listens_for(engine, "handle_error")
    def _failed(exception_context) -> None:
        context = exception_context.execution_context
        span = getattr(context, "_constellation_span", None) if context is not None else None
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, type(exception_context.original_exception).__name__))
            span.end()

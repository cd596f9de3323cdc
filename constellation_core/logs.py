"""Structured JSON logs with a correlation id that follows a request into its Dagster run, and the
trace and span ids of the span a line was logged in."""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)


# Credentials that can reach a log line: an API key in a query string (`/stream?api_key=…`, as
# browsers open the stream), a bearer token, or a key by its prefix anywhere.
_SECRETS = re.compile(r"(api_key=)[^&\s\"']+|(Bearer\s+)[^\s\"']+|\b(cst_)[A-Za-z0-9_-]{6,}", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every credential it holds replaced by `[redacted]`."""
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + "[redacted]", text)


class _RedactFilter(logging.Filter):
    """Keys never reach a log file: the formatted message (and an exception's text) is redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class _CorrelationFilter(logging.Filter):
    """Each line carries the request's correlation id and, inside a traced span, its `trace_id` and
    `span_id` (W3C hex): a log line leads to its span in the trace store, and back."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "correlation_id", None):
            record.correlation_id = correlation_id.get()
        context = trace.get_current_span().get_span_context()
        if context.is_valid and not getattr(record, "trace_id", None):
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(_CorrelationFilter())
    handler.addFilter(_RedactFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True

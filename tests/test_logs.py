"""Logs are JSON lines, and no credential reaches them (issue 12: the access log held the admin key)."""

from __future__ import annotations

import json
import logging

from constellation_core.logs import configure_logging, redact


def test_keys_in_query_strings_headers_and_text_are_redacted():
    assert redact('GET /stream?api_key=cst_AbC123-xyz_789&gpus=true HTTP/1.1') == \
        'GET /stream?api_key=[redacted]&gpus=true HTTP/1.1'
    assert redact("Authorization: Bearer cst_secretsecret") == "Authorization: Bearer [redacted]"
    assert redact("issued cst_Bbvqnf15aepnGUj4oiEjJ for ops") == "issued cst_[redacted] for ops"
    assert redact("GET /jobs?state=queued HTTP/1.1") == "GET /jobs?state=queued HTTP/1.1"


def test_the_access_log_line_of_a_stream_connection_carries_no_key(capsys):
    configure_logging("test")
    try:
        logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000",
                                                 "/stream?api_key=cst_Bbvqnf15aepnGUj4oiEjJVxsvV7ou7V0WyF&gpus=true")
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        logging.getLogger().handlers[:] = []
    assert "cst_Bbvqnf15" not in line["message"] and "api_key=[redacted]" in line["message"]


def test_a_line_logged_inside_a_span_carries_its_trace_and_span_ids(capsys):
    from opentelemetry.sdk.trace import TracerProvider

    configure_logging("test")
    try:
        with TracerProvider().get_tracer("test").start_as_current_span("plan tiles") as span:
            logging.getLogger("constellation").info("planned 63 tiles")
        logging.getLogger("constellation").info("outside any span")
        inside, outside = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:])
    finally:
        logging.getLogger().handlers[:] = []
    context = span.get_span_context()
    assert (inside["trace_id"], inside["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert "trace_id" not in outside

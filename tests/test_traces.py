"""A job's trace through the API: what it answers without a trace store or with tracing off, how it
reads the store's answer, and the relay of the dashboard's spans. The whole path (every process's
spans in the stack's Jaeger, one tree per job) is `test_e2e.py`'s."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.jobs.trace import from_jaeger
from api.traces.router import otlp_traces_url
from tests.samples import job_body

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_job_submitted_with_tracing_off_has_no_trace_and_says_why(client, make_account):
    account = make_account()
    job = client.post("/jobs", json=job_body(), headers=account.headers).json()
    answer = client.get(f"/jobs/{job['id']}/trace", headers=account.headers)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert "tracing was off" in answer.json()["detail"]


def test_another_members_job_trace_is_not_found(client, make_account):
    owner, stranger = make_account(), make_account()
    job = client.post("/jobs", json=job_body(), headers=owner.headers).json()
    answer = client.get(f"/jobs/{job['id']}/trace", headers=stranger.headers)
    assert answer.status_code == 404
    assert "tracing" not in answer.json()["detail"], "a stranger learns nothing about the job"


def test_jaegers_trace_becomes_spans_timed_from_the_first_with_their_parents_and_processes():
    start = 1_796_000_000_000_000  # µs
    body = {"data": [{"traceID": TRACE_ID, "processes": {
        "p1": {"serviceName": "constellation-api"}, "p2": {"serviceName": "constellation-device-worker"}},
        "spans": [
            {"spanID": "b", "operationName": "infer batch", "startTime": start + 2_500, "duration": 1_000,
             "processID": "p2", "references": [{"refType": "CHILD_OF", "traceID": TRACE_ID, "spanID": "a"}],
             "tags": [{"key": "constellation.tiles", "type": "int64", "value": 8},
                      {"key": "error", "type": "bool", "value": True}, {"key": "otel.status_code", "value": "ERROR"}]},
            {"spanID": "a", "operationName": "POST /jobs", "startTime": start, "duration": 4_000, "processID": "p1",
             "references": [], "tags": [{"key": "http.request.method", "type": "string", "value": "POST"}]},
        ]}]}
    found = from_jaeger(TRACE_ID, body)
    assert found.started_at == datetime.fromtimestamp(start / 1e6, UTC)
    assert found.duration_ms == 4.0
    root, batch = found.spans
    assert (root.name, root.parent_id, root.service, root.start_ms, root.error) == (
        "POST /jobs", None, "constellation-api", 0.0, False)
    assert (batch.name, batch.parent_id, batch.service, batch.start_ms, batch.duration_ms, batch.error) == (
        "infer batch", "a", "constellation-device-worker", 2.5, 1.0, True)
    assert batch.attributes == {"constellation.tiles": 8, "error": True}


def test_the_dashboards_spans_need_a_key_and_an_otlp_body(client, make_account):
    account = make_account()
    assert client.post("/traces", json={"resourceSpans": []}).status_code == 401
    refused = client.post("/traces", content=b"spans", headers={**account.headers, "content-type": "text/plain"})
    assert refused.status_code == 415
    assert "application/json" in refused.json()["detail"]
    # With tracing off (no OTLP endpoint here) they are taken and dropped: a browser has nothing to retry.
    assert client.post("/traces", json={"resourceSpans": []}, headers=account.headers).status_code == 202


@pytest.mark.parametrize(("env", "url"), [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"}, "http://127.0.0.1:4318/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:2/t"}, "http://b:2/t"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1", "OTEL_SDK_DISABLED": "true"}, None),
])
def test_the_relay_sends_to_the_endpoint_the_standard_variables_name(monkeypatch, env, url):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert otlp_traces_url() == url


def test_the_span_exporter_hashes_the_processs_resource_once_not_per_span(monkeypatch):
    """The OTLP encoder groups spans by resource; the SDK's `Resource.__hash__` JSON-encodes the
    attributes on every call, which was two thirds of the API's export thread under load."""
    import opentelemetry.sdk.resources as resources
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from constellation_core.tracing import _resource_hashed_once

    resource = _resource_hashed_once(resources.Resource.create({"service.name": "constellation-api"}))
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for _ in range(50):
        provider.get_tracer("test").start_span("SELECT").end()
    calls = []
    monkeypatch.setattr(resources, "dumps", lambda *a, **k: calls.append(1) or "")
    encoded = encode_spans(exporter.get_finished_spans())
    assert calls == []  # hashed when it was made, never again
    assert len(encoded.resource_spans) == 1 and len(encoded.resource_spans[0].scope_spans[0].spans) == 50
    assert {a.key: a.value.string_value for a in encoded.resource_spans[0].resource.attributes}[
        "service.name"] == "constellation-api"
    assert resource == resources.Resource.create({"service.name": "constellation-api"})

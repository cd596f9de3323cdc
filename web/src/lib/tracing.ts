// Browser spans. Every request the dashboard makes to the API (the typed client, `api.ts`) is a client
// span named by its route template (`POST /jobs`, `GET /jobs/{job_id}`), whose W3C context travels in
// a `traceparent` header: the API's spans — and, for a submission, the whole job's: queue, run,
// batches — are its children, so a job's trace starts at the click. The span ends when the answer
// arrives (the fetch instrumentation's would wait 300 ms more for resource timings, and be lost to
// a page left at once). Spans go out as OTLP/JSON to the API (`POST /traces`, same origin, with the
// user's key), which hands them to the trace store; the processor flushes when the page is hidden.
import { context, propagation, SpanKind, SpanStatusCode, trace, type Span } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, WebTracerProvider } from "@opentelemetry/sdk-trace-web";
import type { Middleware } from "openapi-fetch";

export const TRACES_PATH = "/traces";
const tracer = trace.getTracer("constellation-web");
const open = new Map<string, Span>(); // request id → its span
let started = false;

/** Start exporting spans (once; a no-op outside a browser). `key` gives the user's API key. */
export function startTracing(key: () => string | null): void {
  if (typeof window === "undefined" || started) return;
  started = true;
  const exporter = new OTLPTraceExporter({
    url: `${window.location.origin}${TRACES_PATH}`,
    headers: async () => ({ Authorization: `Bearer ${key() ?? ""}` }),
  });
  const provider = new WebTracerProvider({
    resource: resourceFromAttributes({ "service.name": "constellation-web" }),
    spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: 1000 })],
  });
  provider.register({ propagator: new W3CTraceContextPropagator() });
}

/** The typed client's middleware: one client span per request, its context in the request's headers. */
export const tracingMiddleware: Middleware = {
  onRequest({ request, schemaPath, id }) {
    const span = tracer.startSpan(`${request.method} ${schemaPath}`, {
      kind: SpanKind.CLIENT,
      attributes: { "http.request.method": request.method, "url.template": schemaPath, "url.full": request.url },
    });
    open.set(id, span);
    const carrier: Record<string, string> = {};
    propagation.inject(trace.setSpan(context.active(), span), carrier);
    for (const [name, value] of Object.entries(carrier)) request.headers.set(name, value);
    return request;
  },
  onResponse({ response, id }) {
    const span = open.get(id);
    open.delete(id);
    span?.setAttribute("http.response.status_code", response.status);
    if (response.status >= 500) span?.setStatus({ code: SpanStatusCode.ERROR });
    span?.end();
    return response;
  },
  onError({ error, id }) {
    const span = open.get(id);
    open.delete(id);
    span?.setStatus({ code: SpanStatusCode.ERROR, message: String(error) });
    span?.end();
  },
};

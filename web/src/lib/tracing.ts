// Browser spans. Every fetch the dashboard makes to the API is a client span whose W3C context travels
// in a `traceparent` header, so the API's spans — and, for a submission, the whole job's: queue, run,
// batches — are its children: a job's trace starts at the click. Spans go out as OTLP/JSON to the API
// (`POST /traces`, same origin, with the user's key), which hands them to the trace store.
import { registerInstrumentations } from "@opentelemetry/instrumentation";
import { FetchInstrumentation } from "@opentelemetry/instrumentation-fetch";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, WebTracerProvider } from "@opentelemetry/sdk-trace-web";
import { apiKey } from "./api";

export const TRACES_PATH = "/traces";
let started = false;

/** Start tracing the dashboard's fetches (once; a no-op outside a browser). */
export function startTracing(): void {
  if (started || typeof window === "undefined") return;
  started = true;
  const exporter = new OTLPTraceExporter({
    url: `${window.location.origin}${TRACES_PATH}`,
    headers: async () => ({ Authorization: `Bearer ${apiKey() ?? ""}` }),
  });
  const provider = new WebTracerProvider({
    resource: resourceFromAttributes({ "service.name": "constellation-web" }),
    spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: 1000 })],
  });
  provider.register();
  registerInstrumentations({
    tracerProvider: provider,
    instrumentations: [new FetchInstrumentation({
      ignoreUrls: [new RegExp(`${TRACES_PATH}$`)], // the exporter's own requests
      clearTimingResources: true,
    })],
  });
}

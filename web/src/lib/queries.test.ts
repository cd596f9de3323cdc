import { describe, expect, it } from "vitest";
import { ApiError, type JobTrace, SPANS_SETTLE_MS, shouldRetry, type TraceSpan, traceRefetchMs } from "./queries";

describe("shouldRetry", () => {
  it("asks again after network and server errors, a few times", () => {
    expect(shouldRetry(0, new TypeError("Failed to fetch"))).toBe(true);
    expect(shouldRetry(1, new ApiError("unavailable", 503))).toBe(true);
    expect(shouldRetry(3, new ApiError("unavailable", 503))).toBe(false);
  });

  it("never repeats a request the API refused (4xx): the answer would not change", () => {
    expect(shouldRetry(0, new ApiError("no job with id …", 404))).toBe(false);
    expect(shouldRetry(0, new ApiError("Missing, unknown or revoked API key", 401))).toBe(false);
  });
});

describe("traceRefetchMs", () => {
  const started = "2026-12-03T18:11:18.000Z";
  const at = (ms: number) => Date.parse(started) + ms;
  const span = (name: string, start_ms: number, duration_ms: number) =>
    ({ span_id: name, parent_id: null, name, service: "s", start_ms, duration_ms, error: false, attributes: {} }) as TraceSpan;
  const trace = (...spans: TraceSpan[]): JobTrace => ({ trace_id: "t", started_at: started, duration_ms: 2_000, spans });

  it("follows a live job", () => {
    expect(traceRefetchMs(trace(span("end job", 1_000, 5)), true, 50, at(0))).toBe(5_000);
  });

  it("asks again after the job's end until other processes' spans can have come, not at the first `end job`", () => {
    // The run worker sends `end job` as it exits; a device worker's batches come with its next export.
    const ended = trace(span("POST /jobs", 0, 50), span("end job", 1_000, 5));
    expect(traceRefetchMs(ended, false, 3, at(1_005 + 1_000))).toBe(5_000);
    expect(traceRefetchMs(ended, false, 4, at(1_005 + SPANS_SETTLE_MS + 1))).toBe(false);
  });

  it("gives up on an ended job without `end job` after a minute, and on clocks that disagree", () => {
    expect(traceRefetchMs(trace(span("POST /jobs", 0, 50)), false, 11, at(0))).toBe(5_000);
    expect(traceRefetchMs(trace(span("POST /jobs", 0, 50)), false, 12, at(0))).toBe(false);
    expect(traceRefetchMs(trace(span("end job", 1_000, 5)), false, 40, at(-3_600_000))).toBe(false);
  });
});

"use client";
// A job's trace as a waterfall: one row per span, nested under its parent, its bar placed on the
// trace's time axis; the colour says which process recorded it, red marks a failed span. Hover (or
// focus) a row for its attributes. Read from GET /jobs/{id}/trace (the trace store's spans).
import { useEffect, useMemo, useState } from "react";
import type { JobTrace, TraceSpan } from "../lib/queries";
import { Muted } from "../ui/components";

const SERVICE_COLORS: Record<string, string> = {
  "constellation-api": "#2f6fdb",
  "constellation-dispatcher": "#8a4fd0",
  "constellation-run-worker": "#1d9a6c",
  "constellation-device-worker": "#d9822b",
  "constellation-dagster-sensors": "#5f7f95",
  usage: "#b3467d",
};
const ROW = 20; // px

/** The spans in depth-first order (children by start), each with its depth. */
export function waterfallRows(spans: TraceSpan[]): { span: TraceSpan; depth: number }[] {
  const ids = new Set(spans.map((s) => s.span_id));
  const children = new Map<string | null, TraceSpan[]>();
  for (const span of spans) {
    const parent = span.parent_id && ids.has(span.parent_id) ? span.parent_id : null;
    children.set(parent, [...(children.get(parent) ?? []), span]);
  }
  const rows: { span: TraceSpan; depth: number }[] = [];
  const visit = (parent: string | null, depth: number) => {
    for (const span of (children.get(parent) ?? []).sort((a, b) => a.start_ms - b.start_ms)) {
      rows.push({ span, depth });
      visit(span.span_id, depth + 1);
    }
  };
  visit(null, 0);
  return rows;
}

function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 2 : 0)} ms`;
}

/** `highlight`: a span id to show (a log line's "span" link): its row is scrolled to and its details shown. */
export function TraceWaterfall({ trace, highlight }: { trace: JobTrace; highlight?: string | null }) {
  const rows = useMemo(() => waterfallRows(trace.spans), [trace.spans]);
  const [focused, setFocused] = useState<TraceSpan | null>(null);
  useEffect(() => {
    const span = highlight ? trace.spans.find((s) => s.span_id === highlight) : undefined;
    if (!span) return;
    setFocused(span);
    document.getElementById(`span-${span.span_id}`)?.scrollIntoView({ block: "nearest" });
  }, [highlight, trace.spans]);
  const total = Math.max(trace.duration_ms, 1);
  const services = [...new Set(trace.spans.map((s) => s.service))];
  return (
    <div>
      <p style={{ margin: "0 0 0.5rem" }}>
        <Muted>trace {trace.trace_id} · {trace.spans.length} spans · {formatMs(trace.duration_ms)}</Muted>{" "}
        {services.map((service) => (
          <span key={service} style={{ marginLeft: "0.6rem", whiteSpace: "nowrap" }}>
            <span aria-hidden style={{ display: "inline-block", width: 10, height: 10, marginRight: 4, background: SERVICE_COLORS[service] ?? "#9aa4b2" }} />
            {service}
          </span>
        ))}
      </p>
      <div role="table" aria-label="Trace waterfall" style={{ maxHeight: "28rem", overflow: "auto", fontSize: "0.8rem" }}>
        {rows.map(({ span, depth }) => {
          const left = (span.start_ms / total) * 100;
          const width = Math.max((span.duration_ms / total) * 100, 0.2);
          return (
            <div role="row" key={span.span_id} id={`span-${span.span_id}`} tabIndex={0} data-span={span.name} data-service={span.service}
              aria-selected={focused?.span_id === span.span_id}
              onMouseEnter={() => setFocused(span)} onFocus={() => setFocused(span)}
              style={{ display: "grid", gridTemplateColumns: "minmax(14rem, 2fr) 3fr 5rem", alignItems: "center", height: ROW, gap: "0.5rem",
                background: highlight === span.span_id ? "rgba(127,127,127,0.18)" : undefined }}>
              <span role="cell" style={{ paddingLeft: `${depth * 0.8}rem`, whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" }} title={`${span.service}: ${span.name}`}>
                {span.error ? "✗ " : ""}{span.name}
              </span>
              <span role="cell" style={{ position: "relative", height: ROW - 6, background: "rgba(127,127,127,0.08)" }}>
                <span style={{ position: "absolute", left: `${left}%`, width: `${width}%`, top: 0, bottom: 0, borderRadius: 2,
                  background: span.error ? "#c0392b" : SERVICE_COLORS[span.service] ?? "#9aa4b2" }} />
              </span>
              <span role="cell" style={{ textAlign: "right", whiteSpace: "nowrap" }}>{formatMs(span.duration_ms)}</span>
            </div>
          );
        })}
      </div>
      {focused && (
        <p aria-label="Span details" style={{ margin: "0.5rem 0 0" }}>
          <strong>{focused.name}</strong> <Muted>({focused.service}, +{formatMs(focused.start_ms)}, {formatMs(focused.duration_ms)})</Muted>{" "}
          {Object.entries(focused.attributes).map(([k, v]) => <span key={k} style={{ marginRight: "0.6rem" }}><Muted>{k}</Muted>={String(v)}</span>)}
        </p>
      )}
    </div>
  );
}

"use client";
// One job: state timeline, progress with ETA (queue position while queued), live logs, the tile map
// (footprints coloured by class or confidence; click a tile for its result, run and device), runs.
import { useQueryClient } from "@tanstack/react-query";
import { useEffect, useMemo, useState } from "react";
import { useCancelJobs, useImagery, useJob, useJobEvents, useJobTiles, useJobTrace } from "../../../src/lib/hooks";
import { jobKeys } from "../../../src/live/queryKeys";
import { LOG_EVENT_TYPES } from "../../../src/lib/vocabulary";
import { MapView, classColors, type MapLayerView, type TileFeature } from "../../../src/components/MapView";
import { MapControls, TileInfo } from "../../../src/components/TileInfo";
import { TraceWaterfall } from "../../../src/components/TraceWaterfall";
import { Button, Card, ErrorState, ErrorText, Loading, Muted, Page, Progress, StateBadge, Title, formatSeconds } from "../../../src/ui/components";


export default function JobDetail() {
  const [id, setId] = useState("");
  useEffect(() => setId(new URLSearchParams(window.location.search).get("id") ?? "-"), []);
  const client = useQueryClient();
  const job = useJob(id === "-" ? "" : id);
  const events = useJobEvents(id === "-" ? "" : id);
  const running = job.data?.state === "running" || job.data?.state === "queued";
  const tiles = useJobTiles(id === "-" ? "" : id, running);
  const trace = useJobTrace(id === "-" ? "" : id, running);
  const cancel = useCancelJobs();
  const imagery = useImagery(id, Boolean(id) && id !== "-");
  const [view, setView] = useState<MapLayerView>("class");
  const [opacity, setOpacity] = useState(0.6);
  const [selected, setSelected] = useState<Record<string, unknown> | null>(null);
  const state = job.data?.state;
  useEffect(() => {
    if (id && id !== "-" && state) {
      void client.invalidateQueries({ queryKey: jobKeys.tiles(id) });
      void client.invalidateQueries({ queryKey: jobKeys.trace(id) });
    }
  }, [state, id, client]);

  const timeline = useMemo(() => (events.data ?? []).filter((e) => e.type === "job.state"), [events.data]);
  const logs = useMemo(() => (events.data ?? []).filter((e) => LOG_EVENT_TYPES.has(e.type)).slice(-200), [events.data]);
  // A log line written inside a span names it (`payload.span_id`): its "span" link shows it in the trace.
  const spansInTrace = useMemo(() => new Set((trace.data?.spans ?? []).map((s) => s.span_id)), [trace.data]);
  const [shownSpan, setShownSpan] = useState<string | null>(null);
  const legend = useMemo(() => classColors((tiles.data?.features ?? []) as TileFeature[]), [tiles.data]);

  if (id === "-") return <p role="alert">No job id in the address.</p>;
  if (!id || job.isPending) return <Loading what="the job" />;
  if (job.isError) return <ErrorState error={job.error} />;
  const j = job.data;
  const inferred = (tiles.data?.features ?? []).filter((f) => f.properties.class !== null).length;
  return (
    <Page>
      <Title>{j.name}</Title>
      <Card aria-label="Status">
        <p style={{ margin: 0 }}>
          State: <StateBadge state={j.state} testId="state" />
          {j.queue_position ? <> · queue position <strong>{j.queue_position}</strong></> : null}
          {" "}· zoom {j.zoom} · {j.mode} · priority {j.priority} · by {j.submitted_by}
        </p>
        <p>
          <Progress value={j.progress} label="progress" /> {j.tiles_done}/{j.tiles_total ?? "?"} tiles
          {j.tiles_per_s ? ` · ${Math.round(j.tiles_per_s)} tiles/s` : ""}
          {j.state === "running" && j.eta_seconds != null ? ` · ETA ${formatSeconds(j.eta_seconds)}` : ""}
        </p>
        {j.error && <p role="alert"><ErrorText>{j.error}</ErrorText></p>}
        {(j.state === "queued" || j.state === "running") && (
          <Button variant="danger" disabled={cancel.isPending} onClick={() => cancel.mutate([j.id])}>Cancel job</Button>
        )}
        <ol aria-label="State timeline" style={{ display: "flex", gap: "1.5rem", listStyle: "none", padding: 0, flexWrap: "wrap" }}>
          {timeline.map((e) => (
            <li key={e.id}><StateBadge state={String(e.payload.state)} /> <Muted>{e.ts.slice(11, 19)}</Muted></li>
          ))}
        </ol>
      </Card>
      <div style={{ display: "grid", gridTemplateColumns: "minmax(0, 2fr) minmax(16rem, 1fr)", gap: "1rem" }}>
        <Card aria-label="Tiles">
          <h2>Tiles {tiles.data ? <Muted>({inferred} of {tiles.data.features.length} inferred)</Muted> : null}</h2>
          <p style={{ margin: "0 0 0.5rem" }}>
            <MapControls view={view} onView={setView} opacity={opacity} onOpacity={setOpacity} />{" "}
            {view === "class" && legend.map(([c, color]) => (
              <span key={c} style={{ marginLeft: "0.6rem" }}><span aria-hidden style={{ display: "inline-block", width: 10, height: 10, background: color, marginRight: 4 }} />{c}</span>
            ))}
            {view === "confidence" && <Muted> light = low, dark = high</Muted>}
            {view === "imagery" && <Muted> the imagery the model read, tile outlines over it</Muted>}
          </p>
          {tiles.isError ? <ErrorState error={tiles.error} /> : (
            <MapView label="Tile map" tiles={tiles.data as never} area={j.area as never} view={view} opacity={opacity}
              imagery={imagery.data} onSelect={setSelected} />
          )}
        </Card>
        <Card aria-label="Selected tile">
          <h2>Selected tile</h2>
          <TileInfo tile={selected} jobId={j.id} />
          <h2 style={{ marginTop: "1rem" }}>Runs</h2>
          {j.runs.length === 0 ? <Muted>No run yet.</Muted> : (
            <ul style={{ paddingLeft: "1rem" }}>
              {j.runs.map((r) => (
                <li key={r.dagster_run_id}>
                  <a href={r.dagit_url}>{r.dagster_run_id.slice(0, 8)}</a> {r.state} on {r.devices.join(", ") || "–"}
                  {typeof r.metrics.tiles_per_gpu_second === "number" ? <Muted> · {Math.round(r.metrics.tiles_per_gpu_second)} tiles/GPU-s</Muted> : null}
                </li>
              ))}
            </ul>
          )}
          {j.dagit_url && <p><a href={j.dagit_url}>Open in Dagit</a></p>}
        </Card>
      </div>
      <Card aria-label="Trace">
        <h2>Trace</h2>
        {trace.isPending ? <Loading what="the trace" /> : trace.isError ? <ErrorState error={trace.error} /> : <TraceWaterfall trace={trace.data} highlight={shownSpan} />}
      </Card>
      <Card aria-label="Logs">
        <h2>Logs</h2>
        {events.isPending ? <Loading what="logs" /> : events.isError ? <ErrorState error={events.error} /> : logs.length === 0 ? <Muted>No log lines yet.</Muted> : (
          <div role="log" aria-live="polite" style={{ maxHeight: "16rem", overflow: "auto", margin: 0, fontSize: "0.85rem", fontFamily: "monospace", whiteSpace: "pre-wrap" }}>
            {logs.map((e) => {
              const spanId = typeof e.payload.span_id === "string" && spansInTrace.has(e.payload.span_id) ? e.payload.span_id : null;
              return (
                <div key={e.id}>
                  {e.ts.slice(11, 19)} {e.type === "job.state" ? `state → ${String(e.payload.state)}` : String(e.payload.message ?? JSON.stringify(e.payload))}
                  {spanId && <> <button type="button" onClick={() => setShownSpan(spanId)} aria-label={`Show the span of: ${String(e.payload.message ?? e.payload.state)}`}
                    style={{ border: 0, background: "none", padding: 0, color: "inherit", textDecoration: "underline", cursor: "pointer", font: "inherit", opacity: 0.7 }}>span</button></>}
                </div>
              );
            })}
          </div>
        )}
      </Card>
    </Page>
  );
}

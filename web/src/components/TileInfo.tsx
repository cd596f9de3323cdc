"use client";
// What a map click selected: a tile's image chip (the imagery the model read for it, at its input
// size), its result, the run and device that produced it (and its job, on maps that show many jobs),
// plus the controls the tile maps share: what the footprints show over the imagery, and how opaquely.
import { useEffect, useState } from "react";
import { apiKey } from "../lib/api";
import type { MapLayerView } from "./MapView";
import { Muted } from "../ui/components";

export function MapControls({ view, onView, opacity, onOpacity }: {
  view: MapLayerView; onView: (view: MapLayerView) => void; opacity: number; onOpacity: (opacity: number) => void;
}) {
  return (
    <span style={{ display: "inline-flex", gap: "1rem", alignItems: "center", flexWrap: "wrap" }}>
      <span role="radiogroup" aria-label="Show" style={{ display: "inline-flex", gap: "0.6rem" }}>
        {([["imagery", "imagery"], ["class", "classes"], ["confidence", "confidence"]] as const).map(([value, text]) => (
          <label key={value}><input type="radio" name="map-view" value={value} checked={view === value} onChange={() => onView(value)} /> {text}</label>
        ))}
      </span>
      <label style={{ opacity: view === "imagery" ? 0.5 : 1 }}>Results opacity{" "}
        <input type="range" min={0} max={100} step={5} value={Math.round(opacity * 100)} disabled={view === "imagery"}
          onChange={(e) => onOpacity(Number(e.target.value) / 100)} aria-valuetext={`${Math.round(opacity * 100)} %`} />
      </label>
    </span>
  );
}

const num = (v: unknown, digits: number, unit = "") => (v == null ? "–" : `${Number(v).toFixed(digits)}${unit}`);

/** The tile's imagery at the model's input size (64 px), fetched with the key (an <img> cannot send it). */
function Chip({ jobId, z, x, y }: { jobId: string; z: number; x: number; y: number }) {
  const [src, setSrc] = useState<string | null>(null);
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    let url: string | null = null;
    const controller = new AbortController();
    setSrc(null);
    setFailed(false);
    fetch(`/jobs/${jobId}/imagery/${z}/${x}/${y}.png?size=64`, { headers: { Authorization: `Bearer ${apiKey() ?? ""}` }, signal: controller.signal })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(String(r.status)))))
      .then((blob) => { url = URL.createObjectURL(blob); setSrc(url); })
      .catch(() => { if (!controller.signal.aborted) setFailed(true); });
    return () => { controller.abort(); if (url) URL.revokeObjectURL(url); };
  }, [jobId, z, x, y]);
  if (failed) return <Muted>imagery unavailable</Muted>;
  return src
    ? <img src={src} width={128} height={128} alt={`Imagery of tile ${z}/${x}/${y}, as the model read it (64 px)`} data-testid="tile-chip" style={{ imageRendering: "pixelated", borderRadius: 4, display: "block" }} />
    : <Muted>loading the imagery…</Muted>;
}

export function TileInfo({ tile, jobId }: { tile: Record<string, unknown> | null; jobId?: string }) {
  if (!tile) return <Muted>Click a tile on the map.</Muted>;
  const job = typeof tile.job_id === "string" ? tile.job_id : jobId;
  return (
    <div style={{ display: "grid", gap: "0.6rem" }}>
      {job ? <Chip jobId={job} z={Number(tile.z)} x={Number(tile.x)} y={Number(tile.y)} /> : null}
      <dl data-testid="tile-info" style={{ display: "grid", gridTemplateColumns: "auto 1fr", gap: "0.2rem 0.8rem", margin: 0 }}>
        <dt>Tile</dt><dd>{`${tile.z}/${tile.x}/${tile.y}`}</dd>
        <dt>Class</dt><dd>{String(tile.class ?? "not inferred yet")}</dd>
        <dt>Confidence</dt><dd>{num(tile.confidence, 3)}</dd>
        <dt>Device</dt><dd>{String(tile.device ?? "–")}</dd>
        <dt>Inference</dt><dd>{num(tile.inference_ms, 1, " ms")}</dd>
        <dt>Model</dt><dd>{String(tile.model_version ?? "–")}</dd>
        {tile.job_id ? <><dt>Job</dt><dd><a href={`/app/jobs/detail/?id=${tile.job_id}`}>{String(tile.job_id).slice(0, 8)}</a></dd></> : null}
        <dt>Run</dt><dd>{String(tile.run_id ?? "–")}</dd>
      </dl>
    </div>
  );
}

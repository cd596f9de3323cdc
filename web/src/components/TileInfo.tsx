"use client";
// What a map click selected: a tile's result, the run and device that produced it (and its job, on
// maps that show many jobs), plus the colour-by control the tile maps share.
import { Muted } from "../ui/components";

export type ColorBy = "class" | "confidence";

export function ColorBySelect({ value, onChange }: { value: ColorBy; onChange: (value: ColorBy) => void }) {
  return (
    <label>Colour by{" "}
      <select value={value} onChange={(e) => onChange(e.target.value as ColorBy)}>
        <option value="class">class</option><option value="confidence">confidence</option>
      </select>
    </label>
  );
}

const num = (v: unknown, digits: number, unit = "") => (v == null ? "–" : `${Number(v).toFixed(digits)}${unit}`);

export function TileInfo({ tile }: { tile: Record<string, unknown> | null }) {
  if (!tile) return <Muted>Click a tile on the map.</Muted>;
  return (
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
  );
}

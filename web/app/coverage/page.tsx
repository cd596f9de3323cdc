"use client";
// Coverage: every processed tile on one map (yours; admins: everyone's); click a tile → its job and run.
import { useState } from "react";
import { useCoverage } from "../../src/lib/hooks";
import { MapView } from "../../src/components/MapView";
import { Card, Empty, ErrorState, Loading, Muted, Page, Title } from "../../src/ui/components";

const WORLD = "-180,-85,180,85";

export default function Coverage() {
  const coverage = useCoverage(WORLD);
  const [colorBy, setColorBy] = useState<"class" | "confidence">("class");
  const [selected, setSelected] = useState<Record<string, unknown> | null>(null);
  return (
    <Page>
      <Title>Coverage</Title>
      {coverage.isPending ? <Loading what="coverage" /> : coverage.isError ? <ErrorState error={coverage.error} /> : coverage.data.features.length === 0 ? (
        <Empty>No tile has been processed yet.</Empty>
      ) : (
        <div style={{ display: "grid", gridTemplateColumns: "minmax(0, 3fr) minmax(15rem, 1fr)", gap: "1rem" }}>
          <Card>
            <p style={{ margin: "0 0 0.5rem" }}>
              {coverage.data.features.length.toLocaleString()} tiles{coverage.data.truncated ? " (the newest; more exist)" : ""} ·{" "}
              <label>Colour by <select value={colorBy} onChange={(e) => setColorBy(e.target.value as typeof colorBy)}><option value="class">class</option><option value="confidence">confidence</option></select></label>
            </p>
            <MapView label="Coverage map" tiles={coverage.data as never} colorBy={colorBy} onSelect={setSelected} height="34rem" />
          </Card>
          <Card aria-label="Selected tile">
            <h2>Selected tile</h2>
            {selected ? (
              <dl data-testid="tile-info" style={{ display: "grid", gridTemplateColumns: "auto 1fr", gap: "0.2rem 0.8rem", margin: 0 }}>
                <dt>Tile</dt><dd>{`${selected.z}/${selected.x}/${selected.y}`}</dd>
                <dt>Class</dt><dd>{String(selected.class)}</dd>
                <dt>Confidence</dt><dd>{Number(selected.confidence).toFixed(3)}</dd>
                <dt>Device</dt><dd>{String(selected.device ?? "–")}</dd>
                <dt>Job</dt><dd><a href={`/app/jobs/detail/?id=${selected.job_id}`}>{String(selected.job_id).slice(0, 8)}</a></dd>
                <dt>Run</dt><dd>{String(selected.run_id ?? "–").slice(0, 8)}</dd>
              </dl>
            ) : <Muted>Click a tile on the map.</Muted>}
          </Card>
        </div>
      )}
    </Page>
  );
}

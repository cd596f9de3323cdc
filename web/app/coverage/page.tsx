"use client";
// Coverage: every processed tile on one map (yours; admins: everyone's); click a tile → its job and run.
import { useState } from "react";
import { useCoverage } from "../../src/lib/hooks";
import { MapView } from "../../src/components/MapView";
import { ColorBySelect, TileInfo, type ColorBy } from "../../src/components/TileInfo";
import { Card, Empty, ErrorState, Loading, Page, Title } from "../../src/ui/components";

const WORLD = "-180,-85,180,85";

export default function Coverage() {
  const coverage = useCoverage(WORLD);
  const [colorBy, setColorBy] = useState<ColorBy>("class");
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
              <ColorBySelect value={colorBy} onChange={setColorBy} />
            </p>
            <MapView label="Coverage map" tiles={coverage.data as never} colorBy={colorBy} onSelect={setSelected} height="34rem" />
          </Card>
          <Card aria-label="Selected tile">
            <h2>Selected tile</h2>
            <TileInfo tile={selected} />
          </Card>
        </div>
      )}
    </Page>
  );
}

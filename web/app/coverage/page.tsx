"use client";
// Coverage: every processed tile on one map (yours; admins: everyone's) over the demo scene's imagery;
// click a tile → its image chip, its job and run.
import { useState } from "react";
import { useCoverage, useImagery } from "../../src/lib/hooks";
import { MapView, type MapLayerView } from "../../src/components/MapView";
import { MapControls, TileInfo } from "../../src/components/TileInfo";
import { Card, Empty, ErrorState, Loading, Page, Title } from "../../src/ui/components";

const WORLD = "-180,-85,180,85";

export default function Coverage() {
  const coverage = useCoverage(WORLD);
  const imagery = useImagery(null);
  const [view, setView] = useState<MapLayerView>("class");
  const [opacity, setOpacity] = useState(0.6);
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
              <MapControls view={view} onView={setView} opacity={opacity} onOpacity={setOpacity} />
            </p>
            <MapView label="Coverage map" tiles={coverage.data as never} view={view} opacity={opacity} imagery={imagery.data}
              onSelect={setSelected} height="34rem" />
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

"use client";
// MapLibre GL map with our own GeoJSON layers on a bundled style: Natural Earth land and borders
// (world-atlas, 1:50m, loaded with the map) for orientation, no external tile server or glyphs.
// Under the results, the imagery the model read (the API's XYZ PNG tiles, fetched with the API key).
// Tiles are filled by class (categorical) or confidence (ramp) at the chosen opacity, or only
// outlined over the imagery; a click selects a tile. In drawing mode clicks add the vertices of a
// polygon. The container reports how many tile footprints are drawn (data-rendered-tiles) and how
// many imagery tiles loaded (data-imagery-tiles), which is what the browser tests check.
import { useTheme } from "@emotion/react";
import maplibregl, { type GeoJSONSource, type LngLatBoundsLike, type Map as MlMap } from "maplibre-gl";
import { useEffect, useRef, useState } from "react";
import { apiKey } from "../lib/api";

export type Geometry = { type: string; coordinates: unknown };
export interface TileFeature { type?: string; id?: string | number; geometry: Record<string, unknown>; properties: Record<string, unknown> }
/** The imagery under the results: a TileJSON from the API (tile URLs on its origin). */
export interface Imagery { tiles: string[]; bounds: number[]; minzoom: number; maxzoom: number }
/** What the tile footprints show: only their outlines over the imagery, or a fill by class or confidence. */
export type MapLayerView = "imagery" | "class" | "confidence";
export interface MapViewProps {
  tiles?: { features: TileFeature[] };
  view?: MapLayerView;
  opacity?: number; // of the class/confidence fill over the imagery, 0–1
  imagery?: Imagery | null;
  area?: Geometry | null;
  draft?: [number, number][]; // vertices being drawn
  onSelect?: (properties: Record<string, unknown> | null) => void;
  onMapClick?: (lngLat: [number, number]) => void;
  label: string;
  height?: string;
}

const CLASS_COLORS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e", "#7f7f7f"];

// The land-cover classes in the colours remote-sensing maps use for them, so flicking between the
// imagery and the classes compares like with like; any other class gets the categorical palette.
const LANDCOVER_COLORS: Record<string, string> = {
  water: "#1f5fbf", vegetation: "#2e8b3a", urban: "#c2413b", bare: "#c8a165", cloud: "#f4f4f6",
};

export function classColors(features: TileFeature[]): [string, string][] {
  const classes = [...new Set(features.map((f) => f.properties.class).filter((c): c is string => typeof c === "string"))].sort();
  return classes.map((c, i) => [c, LANDCOVER_COLORS[c] ?? CLASS_COLORS[i % CLASS_COLORS.length]]);
}

let world: Promise<{ land: GeoJSON.GeoJSON; borders: GeoJSON.GeoJSON }> | undefined;

/** Natural Earth land and country borders at 1:50m, bundled (world-atlas), converted once per page. */
function loadWorld() {
  world ??= Promise.all([import("world-atlas/countries-50m.json"), import("topojson-client")]).then(([atlas, topojson]) => {
    const topology = (atlas.default ?? atlas) as unknown as import("topojson-specification").Topology;
    const objects = topology.objects as Record<string, import("topojson-specification").GeometryCollection>;
    return {
      land: topojson.feature(topology, objects.land) as GeoJSON.GeoJSON,
      borders: topojson.mesh(topology, objects.countries, (a, b) => a !== b) as GeoJSON.GeoJSON,
    };
  });
  return world;
}

function bounds(geometries: Geometry[]): LngLatBoundsLike | null {
  let w = 180, s = 90, e = -180, n = -90;
  const visit = (c: unknown): void => {
    if (Array.isArray(c) && typeof c[0] === "number") {
      w = Math.min(w, c[0]); e = Math.max(e, c[0]); s = Math.min(s, c[1] as number); n = Math.max(n, c[1] as number);
    } else if (Array.isArray(c)) c.forEach(visit);
  };
  geometries.forEach((g) => visit(g.coordinates));
  return w <= e ? [[w, s], [e, n]] : null;
}

/** Requests to the API's origin (imagery tiles) carry the key, as the API client's do. */
function withKey(url: string): { url: string; headers?: Record<string, string> } {
  const key = apiKey();
  return key && url.startsWith(window.location.origin) ? { url, headers: { Authorization: `Bearer ${key}` } } : { url };
}

export function MapView({ tiles, view = "class", opacity = 0.6, imagery, area, draft, onSelect, onMapClick, label, height = "26rem" }: MapViewProps) {
  const colorBy = view === "confidence" ? "confidence" : "class";
  const theme = useTheme();
  const container = useRef<HTMLDivElement>(null);
  const map = useRef<MlMap | null>(null);
  const [ready, setReady] = useState(false);
  const handlers = useRef({ onSelect, onMapClick });
  handlers.current = { onSelect, onMapClick };
  const fittedFor = useRef<unknown>(null);

  useEffect(() => {
    const m = new maplibregl.Map({
      container: container.current!,
      style: { version: 8, sources: {}, layers: [{ id: "background", type: "background", paint: { "background-color": theme.map.background } }] },
      center: [0, 20],
      zoom: 1,
      attributionControl: false,
      transformRequest: withKey,
      // The browser tests sample the drawn pixels (imagery under the tiles).
      canvasContextAttributes: { preserveDrawingBuffer: true },
    });
    m.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
    m.on("load", () => {
      const empty = { type: "FeatureCollection" as const, features: [] };
      m.addSource("land", { type: "geojson", data: empty });
      m.addSource("borders", { type: "geojson", data: empty });
      m.addLayer({ id: "land", type: "fill", source: "land", paint: { "fill-color": theme.map.land } });
      m.addLayer({ id: "borders", type: "line", source: "borders", paint: { "line-color": theme.map.border, "line-width": 0.6 } });
      void loadWorld().then(({ land, borders }) => {
        if (!map.current) return;
        (m.getSource("land") as GeoJSONSource).setData(land);
        (m.getSource("borders") as GeoJSONSource).setData(borders);
      });
      m.addSource("area", { type: "geojson", data: empty });
      m.addSource("tiles", { type: "geojson", data: empty });
      m.addSource("draft", { type: "geojson", data: empty });
      m.addLayer({ id: "area-line", type: "line", source: "area", paint: { "line-color": theme.map.area, "line-width": 2 } });
      m.addLayer({ id: "tiles-fill", type: "fill", source: "tiles", paint: { "fill-color": theme.map.fill, "fill-opacity": 0.6 } });
      m.addLayer({ id: "tiles-line", type: "line", source: "tiles", paint: { "line-color": theme.map.outline, "line-width": 0.4, "line-opacity": 0.5 } });
      m.addLayer({ id: "draft-fill", type: "fill", source: "draft", paint: { "fill-color": theme.map.area, "fill-opacity": 0.2 } });
      m.addLayer({ id: "draft-line", type: "line", source: "draft", paint: { "line-color": theme.map.area, "line-width": 2 } });
      m.addLayer({ id: "draft-points", type: "circle", source: "draft", filter: ["==", ["geometry-type"], "Point"], paint: { "circle-radius": 4, "circle-color": theme.map.area } });
      setReady(true);
    });
    let imageryTiles = 0;
    m.on("sourcedata", (e) => {
      if (e.sourceId === "imagery" && e.tile && container.current) container.current.dataset.imageryTiles = String(++imageryTiles);
    });
    let idles = 0;
    m.on("idle", () => {
      if (!container.current) return;
      container.current.dataset.idle = String(++idles); // a frame with everything loaded was drawn
      // … with this results opacity (the browser tests wait for the frame of the opacity they set).
      if (m.getLayer("tiles-fill")) container.current.dataset.fillOpacity = String(m.getPaintProperty("tiles-fill", "fill-opacity"));
      // Distinct tiles drawn (a footprint split across MapLibre's own tiles is one tile here).
      const drawn = m.getLayer("tiles-fill") ? m.queryRenderedFeatures({ layers: ["tiles-fill"] }) : [];
      container.current.dataset.renderedTiles = String(new Set(drawn.map((f) => `${f.properties.z}/${f.properties.x}/${f.properties.y}`)).size);
    });
    m.on("click", (e) => {
      if (handlers.current.onMapClick) {
        handlers.current.onMapClick([e.lngLat.lng, e.lngLat.lat]);
        return;
      }
      const hit = m.getLayer("tiles-fill") ? m.queryRenderedFeatures(e.point, { layers: ["tiles-fill"] })[0] : undefined;
      handlers.current.onSelect?.(hit ? (hit.properties as Record<string, unknown>) : null);
    });
    m.on("mousemove", "tiles-fill", () => (m.getCanvas().style.cursor = "pointer"));
    m.on("mouseleave", "tiles-fill", () => (m.getCanvas().style.cursor = ""));
    map.current = m;
    return () => { m.remove(); map.current = null; };
    // The map is created once; theme changes restyle it below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  useEffect(() => {
    const m = map.current;
    if (!m || !ready) return;
    m.setPaintProperty("background", "background-color", theme.map.background);
    m.setPaintProperty("land", "fill-color", theme.map.land);
    m.setPaintProperty("borders", "line-color", theme.map.border);
    m.setPaintProperty("tiles-line", "line-color", theme.map.outline);
    m.setPaintProperty("area-line", "line-color", theme.map.area);
  }, [theme, ready]);

  useEffect(() => {
    const m = map.current;
    if (!m || !ready || !imagery || m.getSource("imagery")) return;
    m.addSource("imagery", {
      type: "raster", tileSize: 256, bounds: imagery.bounds as [number, number, number, number],
      minzoom: imagery.minzoom, maxzoom: imagery.maxzoom,
      tiles: imagery.tiles.map((t) => new URL(t, window.location.origin).href.replace(/%7B/g, "{").replace(/%7D/g, "}")),
    });
    m.addLayer({ id: "imagery", type: "raster", source: "imagery", paint: { "raster-fade-duration": 0 } }, "area-line");
  }, [imagery, ready]);

  useEffect(() => {
    const m = map.current;
    if (!m || !ready) return;
    m.setPaintProperty("tiles-fill", "fill-opacity", view === "imagery" ? 0 : opacity);
    m.setPaintProperty("tiles-line", "line-opacity", view === "imagery" ? 0.9 : 0.5);
  }, [view, opacity, ready]);

  useEffect(() => {
    const m = map.current;
    if (!m || !ready) return;
    const features = tiles?.features ?? [];
    (m.getSource("tiles") as GeoJSONSource).setData({ type: "FeatureCollection", features: features as never });
    (m.getSource("area") as GeoJSONSource).setData(area ? { type: "Feature", properties: {}, geometry: area as never } : { type: "FeatureCollection", features: [] });
    if (colorBy === "confidence") {
      m.setPaintProperty("tiles-fill", "fill-color", [
        "case", ["==", ["get", "confidence"], null], theme.muted,
        ["interpolate", ["linear"], ["get", "confidence"], 0, "#fde0c5", 0.5, "#f59e0b", 1, "#7c2d12"],
      ]);
    } else {
      const pairs = classColors(features);
      m.setPaintProperty("tiles-fill", "fill-color", pairs.length
        ? ["match", ["coalesce", ["get", "class"], ""], ...pairs.flat(), theme.muted]
        : theme.muted);
    }
    // Fit the view once per area (or once to the tiles when there is no area).
    const fitKey = area ?? (features.length ? "tiles" : null);
    if (fitKey !== null && fitKey !== fittedFor.current) {
      const box = bounds([...(area ? [area] : []), ...features.slice(0, 5000).map((f) => f.geometry as unknown as Geometry)]);
      if (box) { m.fitBounds(box, { padding: 30, duration: 0, maxZoom: 16 }); fittedFor.current = fitKey; }
    }
  }, [tiles, area, colorBy, ready, theme]);

  useEffect(() => {
    const m = map.current;
    if (!m || !ready) return;
    const points = draft ?? [];
    const features: unknown[] = points.map((p) => ({ type: "Feature", properties: {}, geometry: { type: "Point", coordinates: p } }));
    if (points.length >= 3) features.push({ type: "Feature", properties: {}, geometry: { type: "Polygon", coordinates: [[...points, points[0]]] } });
    else if (points.length === 2) features.push({ type: "Feature", properties: {}, geometry: { type: "LineString", coordinates: points } });
    (m.getSource("draft") as GeoJSONSource).setData({ type: "FeatureCollection", features: features as never });
  }, [draft, ready]);

  return (
    <div ref={container} role="region" aria-label={label} data-testid="map" data-ready={ready ? "true" : "false"} data-view={view}
      style={{ height, width: "100%", borderRadius: 8, overflow: "hidden", border: `1px solid ${theme.border}`, cursor: onMapClick ? "crosshair" : undefined }} />
  );
}

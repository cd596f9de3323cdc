"use client";
// Submit: draw an area on the map or upload GeoJSON; set model, zoom, priority and mode; the tile
// count is estimated by the API (same checks as a submission) before anything is submitted; the
// API's validation errors are shown next to the fields they name. An uploaded file goes to the API
// as it is (it reads Features and collections by one rule) and the map draws the area it answers.
import { useEffect, useState } from "react";
import { api, fieldError, type Problem } from "../../src/lib/api";
import { useCatalog } from "../../src/lib/hooks";
import { MapView, type Geometry } from "../../src/components/MapView";
import { Button, Card, ErrorText, Field, Muted, Page, Title } from "../../src/ui/components";

const NOT_GEOJSON: Problem = { title: "Invalid input", status: 422, detail: "the file is not GeoJSON", errors: [{ loc: ["body", "area"], msg: "the file is not GeoJSON" }] };

export default function Submit() {
  const [problem, setProblem] = useState<Problem>();
  const [created, setCreated] = useState<string>();
  const [source, setSource] = useState<object | null>(null); // what is sent: the file's GeoJSON, or the drawn polygon
  const [area, setArea] = useState<Geometry | null>(null); // what the map draws: the area as the API reads it
  const catalog = useCatalog();
  const [drawing, setDrawing] = useState(false);
  const [draft, setDraft] = useState<[number, number][]>([]);
  const [zoom, setZoom] = useState(15);
  const [estimate, setEstimate] = useState<{ tiles: number; max_tiles: number; area_km2: number; area: object } | { error: string } | null>(null);
  const [busy, setBusy] = useState(false);

  // The tile count for the current area and zoom, from the API, as the user edits.
  useEffect(() => {
    if (!source) { setEstimate(null); return; }
    const controller = new AbortController();
    const t = setTimeout(async () => {
      // A newer area or zoom aborts this request (the cleanup below): its rejection is expected, not an error.
      const answer = await api.POST("/jobs/estimate", { body: { zoom, area: source as never }, signal: controller.signal })
        .catch((failure: unknown) => (controller.signal.aborted ? null : { data: undefined, error: { detail: `could not estimate: ${String(failure)}` } }));
      if (!answer || controller.signal.aborted) return;
      const { data, error } = answer;
      setEstimate(data ?? { error: (error as { detail?: string } | undefined)?.detail ?? "could not estimate" });
      if (data) setArea(data.area as Geometry);
    }, 250);
    return () => { clearTimeout(t); controller.abort(); };
  }, [source, zoom]);

  function choose(next: object | null, drawn: Geometry | null = null) {
    setSource(next);
    setArea(drawn);
  }

  async function onFile(file: File | undefined) {
    setProblem(undefined);
    if (!file) { choose(null); return; }
    try {
      choose(JSON.parse(await file.text()));
    } catch {
      choose(null);
      setProblem(NOT_GEOJSON);
    }
  }

  async function submit(form: HTMLFormElement) {
    const fields = new FormData(form);
    if (!source) {
      setProblem(problem ?? { title: "Invalid input", status: 422, detail: "draw an area or upload a GeoJSON file", errors: [{ loc: ["body", "area"], msg: "draw an area or upload a GeoJSON file" }] });
      return;
    }
    setBusy(true);
    const { data, error } = await api.POST("/jobs", {
      body: {
        name: String(fields.get("name") || "job"), zoom, model: String(fields.get("model")),
        mode: fields.get("mode") as "serial" | "parallel", priority: Number(fields.get("priority") || 0),
        area: source as never,
      },
    });
    setBusy(false);
    if (error) { setProblem(error as unknown as Problem); return; }
    setProblem(undefined);
    setCreated(data.id);
  }

  const areaError = fieldError(problem, "area");
  const errorFor = (name: string) => fieldError(problem, name);
  const shown = new Set(["area", "zoom", "name", "priority", "mode", "model"].filter((n) => errorFor(n)));
  return (
    <Page>
      <Title>Submit a job</Title>
      <form onSubmit={(e) => { e.preventDefault(); void submit(e.currentTarget); }} aria-label="Submit a job"
        style={{ display: "grid", gridTemplateColumns: "minmax(16rem, 1fr) minmax(0, 2fr)", gap: "1rem" }}>
        <Card>
          <Field>
            <label htmlFor="name">Name</label>
            <input id="name" name="name" required maxLength={200} aria-describedby={errorFor("name") ? "name-error" : undefined} />
            {errorFor("name") && <ErrorText role="alert" id="name-error">{errorFor("name")}</ErrorText>}
          </Field>
          <Field>
            <label htmlFor="area">Area (GeoJSON file)</label>
            <input id="area" name="area" type="file" accept=".json,.geojson,application/geo+json" onChange={(e) => void onFile(e.target.files?.[0])}
              aria-describedby={areaError ? "area-error" : undefined} />
            <Muted>…or draw it on the map.</Muted>
            {areaError && <ErrorText role="alert" id="area-error">{areaError}</ErrorText>}
          </Field>
          <Field>
            <label htmlFor="zoom">Zoom</label>
            <input id="zoom" name="zoom" type="number" value={zoom} min={1} max={20} onChange={(e) => setZoom(Number(e.target.value))} />
            {errorFor("zoom") && <ErrorText role="alert">{errorFor("zoom")}</ErrorText>}
          </Field>
          <Field>
            <label htmlFor="model">Model</label>
            <select id="model" name="model" key={catalog.data?.default_model} defaultValue={catalog.data?.default_model} aria-describedby="model-help">
              {catalog.data?.models.map((m) => <option key={m.name} value={m.name}>{m.name}</option>)}
            </select>
            <Muted id="model-help">{catalog.data?.models.find((m) => m.name === catalog.data?.default_model)?.description ?? (catalog.isError ? "could not load the models" : "…")}</Muted>
          </Field>
          <Field>
            <label htmlFor="priority">Priority</label>
            <input id="priority" name="priority" type="number" defaultValue={0} min={-100} max={100} />
            {errorFor("priority") && <ErrorText role="alert">{errorFor("priority")}</ErrorText>}
          </Field>
          <Field>
            <label htmlFor="mode">Mode</label>
            <select id="mode" name="mode" key={catalog.data?.default_mode} defaultValue={catalog.data?.default_mode}>
              {catalog.data?.modes.map((m) => <option key={m} value={m}>{m === "parallel" ? "parallel (every device)" : "serial (one device)"}</option>)}
            </select>
          </Field>
          <p aria-live="polite" data-testid="estimate">
            {estimate === null ? <Muted>Choose an area to see its tile count.</Muted>
              : "error" in estimate ? <ErrorText>{estimate.error}</ErrorText>
              : <>Estimated <strong>{estimate.tiles.toLocaleString()}</strong> tiles ({estimate.area_km2.toLocaleString()} km², at most {estimate.max_tiles.toLocaleString()} per job)</>}
          </p>
          <Button type="submit" variant="primary" disabled={busy}>Submit</Button>
          {problem && shown.size === 0 && <p role="alert"><ErrorText>{problem.detail}</ErrorText></p>}
          {created && <p role="status">Submitted: <a href={`/app/jobs/detail/?id=${created}`}>{created}</a></p>}
        </Card>
        <Card aria-label="Area">
          <p style={{ margin: "0 0 0.5rem", display: "flex", gap: "0.5rem", flexWrap: "wrap", alignItems: "center" }}>
            {!drawing ? (
              <Button type="button" onClick={() => { setDrawing(true); setDraft([]); }}>Draw an area</Button>
            ) : (
              <>
                <Muted>Click the map to add corners ({draft.length}).</Muted>
                <Button type="button" disabled={draft.length < 3} onClick={() => {
                  const drawn: Geometry = { type: "Polygon", coordinates: [[...draft, draft[0]]] };
                  choose(drawn, drawn);
                  setProblem(undefined);
                  setDrawing(false);
                  setDraft([]);
                }}>Use this area</Button>
                <Button type="button" onClick={() => { setDrawing(false); setDraft([]); }}>Stop drawing</Button>
              </>
            )}
            {source && !drawing && <Button type="button" onClick={() => choose(null)}>Clear area</Button>}
          </p>
          <MapView label="Area map" area={area} draft={draft} onMapClick={drawing ? (p) => setDraft((d) => [...d, p]) : undefined} height="30rem" />
        </Card>
      </form>
    </Page>
  );
}

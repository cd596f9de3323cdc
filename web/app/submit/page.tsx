"use client";
import { useState } from "react";
import { api, fieldError, type Problem } from "../../src/lib/api";

export default function Submit() {
  const [problem, setProblem] = useState<Problem>();
  const [created, setCreated] = useState<string>();
  async function submit(form: HTMLFormElement) {
    const fields = new FormData(form);
    const file = fields.get("area") as File | null;
    let area: Record<string, unknown> | undefined;
    try {
      const geojson = JSON.parse((await file?.text()) || "null");
      area = geojson?.type === "Feature" ? geojson.geometry : geojson?.type === "FeatureCollection" && geojson.features?.length === 1 ? geojson.features[0].geometry : geojson;
    } catch {
      setProblem({ title: "Invalid input", status: 422, detail: "the file is not GeoJSON", errors: [{ loc: ["body", "area"], msg: "the file is not GeoJSON" }] });
      return;
    }
    const { data, error } = await api.POST("/jobs", {
      body: {
        name: String(fields.get("name") || file?.name || "job"), zoom: Number(fields.get("zoom")),
        mode: fields.get("mode") as "serial" | "parallel", priority: Number(fields.get("priority") || 0),
        area: area as never,
      },
    });
    if (error) { setProblem(error as unknown as Problem); return; }
    setProblem(undefined);
    setCreated(data.id);
  }
  const areaError = fieldError(problem, "area");
  const zoomError = fieldError(problem, "zoom");
  return (
    <form onSubmit={(e) => { e.preventDefault(); void submit(e.currentTarget); }} aria-label="Submit a job">
      <p><label htmlFor="name">Name</label> <input id="name" name="name" /></p>
      <p>
        <label htmlFor="area">Area (GeoJSON file)</label> <input id="area" name="area" type="file" accept=".json,.geojson" required />
        {areaError && <span role="alert" id="area-error"> {areaError}</span>}
      </p>
      <p>
        <label htmlFor="zoom">Zoom</label> <input id="zoom" name="zoom" type="number" defaultValue={15} min={1} max={22} />
        {zoomError && <span role="alert"> {zoomError}</span>}
      </p>
      <p><label htmlFor="mode">Mode</label> <select id="mode" name="mode" defaultValue="parallel"><option>parallel</option><option>serial</option></select></p>
      <p><label htmlFor="priority">Priority</label> <input id="priority" name="priority" type="number" defaultValue={0} /></p>
      <button type="submit">Submit</button>
      {problem && !areaError && !zoomError && <p role="alert">{problem.detail}</p>}
      {created && <p role="status">Submitted: <a href={`/app/jobs/detail/?id=${created}`}>{created}</a></p>}
    </form>
  );
}

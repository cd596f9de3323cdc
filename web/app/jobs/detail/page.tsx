"use client";
import { useQuery } from "@tanstack/react-query";
import { api } from "../../../src/lib/api";
import { jobKeys } from "../../../src/live/queryKeys";

export default function JobDetail() {
  const id = typeof window === "undefined" ? "" : new URLSearchParams(window.location.search).get("id") ?? "";
  const job = useQuery({
    queryKey: jobKeys.detail(id),
    enabled: Boolean(id),
    queryFn: async () => {
      const { data, error } = await api.GET("/jobs/{job_id}", { params: { path: { job_id: id } } });
      if (error) throw new Error((error as { detail?: string }).detail ?? "could not load the job");
      return data;
    },
  });
  if (!id) return <p role="alert">No job id in the address.</p>;
  if (job.isPending) return <p role="status">Loading…</p>;
  if (job.isError) return <p role="alert">{job.error.message}</p>;
  const j = job.data;
  return (
    <article aria-label={`Job ${j.name}`}>
      <h1>{j.name}</h1>
      <p>State: <strong data-testid="state">{j.state}</strong>{j.queue_position ? ` (queue position ${j.queue_position})` : ""}</p>
      <p>
        <progress max={1} value={j.progress} aria-label="progress" /> {j.tiles_done}/{j.tiles_total} tiles
        {j.tiles_per_s ? ` · ${Math.round(j.tiles_per_s)} tiles/s` : ""}{j.eta_seconds ? ` · ETA ${Math.round(j.eta_seconds)} s` : ""}
      </p>
      {j.error && <p role="alert">{j.error}</p>}
      <h2>Runs</h2>
      <ul>{j.runs.map((r) => <li key={r.dagster_run_id}><a href={r.dagit_url}>{r.dagster_run_id}</a> {r.state} on {r.devices.join(", ") || "-"}</li>)}</ul>
    </article>
  );
}

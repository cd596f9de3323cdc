"use client";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../src/lib/api";
import { jobKeys } from "../../src/live/queryKeys";



export default function Jobs() {
  const client = useQueryClient();
  const filters = {};
  const jobs = useQuery({
    queryKey: jobKeys.list(filters),
    // Live events keep it current; a slow poll covers a stream that is down.
    refetchInterval: 15_000,
    queryFn: async () => {
      const { data, error } = await api.GET("/jobs", { params: { query: { limit: 100 } } });
      if (error) throw new Error((error as { detail?: string }).detail ?? "could not load jobs");
      return data;
    },
  });
  if (jobs.isPending) return <p role="status">Loading jobs…</p>;
  if (jobs.isError) return <p role="alert">{jobs.error.message} — is your <a href="/app/signin/">API key</a> set?</p>;
  if (jobs.data.data.length === 0) return <p>No jobs yet: <a href="/app/submit/">submit one</a>.</p>;
  return (
    <table aria-label="Jobs" style={{ borderCollapse: "collapse", width: "100%" }}>
      <thead>
        <tr><th align="left">Name</th><th align="left">State</th><th align="left">Progress</th><th align="left">Tiles</th><th align="left">Mode</th><th align="left">Created</th><th /></tr>
      </thead>
      <tbody>
        {jobs.data.data.map((job) => (
          <tr key={job.id} data-job-id={job.id} data-state={job.state}>
            <td><a href={`/app/jobs/detail/?id=${job.id}`}>{job.name}</a></td>
            <td>{job.state}</td>
            <td><progress max={1} value={job.progress} aria-label={`${job.name} progress`} /> {Math.round(job.progress * 100)}%</td>
            <td>{job.tiles_done}/{job.tiles_total}</td>
            <td>{job.mode}</td>
            <td>{job.created_at.slice(0, 19).replace("T", " ")}</td>
            <td>
              {(job.state === "queued" || job.state === "running") && (
                <button onClick={async () => {
                  await api.POST("/jobs/{job_id}/cancel", { params: { path: { job_id: job.id } } });
                  void client.invalidateQueries({ queryKey: jobKeys.all });
                }}>Cancel</button>
              )}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

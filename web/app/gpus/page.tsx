"use client";
import { useQuery } from "@tanstack/react-query";
import { api } from "../../src/lib/api";
import { gpuKeys } from "../../src/live/queryKeys";

export default function Gpus() {
  const gpus = useQuery({
    queryKey: gpuKeys.all,
    refetchInterval: 15_000, // telemetry samples arrive live; the inventory rarely changes
    queryFn: async () => {
      const { data, error } = await api.GET("/gpus");
      if (error) throw new Error((error as { detail?: string }).detail ?? "could not load devices");
      return data;
    },
  });
  if (gpus.isPending) return <p role="status">Loading devices…</p>;
  if (gpus.isError) return <p role="alert">{gpus.error.message}</p>;
  if (gpus.data.length === 0) return <p>No device has registered yet.</p>;
  return (
    <section aria-label="Devices" style={{ display: "flex", gap: "1rem", flexWrap: "wrap" }}>
      {gpus.data.map((gpu) => (
        <article key={gpu.uuid} aria-label={gpu.name} style={{ border: "1px solid #ccd", padding: "0.75rem", minWidth: "16rem" }}>
          <h2 style={{ fontSize: "1rem" }}>{gpu.name}</h2>
          {gpu.simulated && <p><strong>Simulated</strong>: scheduled like a GPU, computes on the CPU.</p>}
          <p>{gpu.busy ? `Busy: ${gpu.job_ids.length} job(s)` : "Idle"}</p>
          {gpu.latest ? (
            <ul>
              {Object.entries(gpu.latest.fields).filter(([, v]) => v !== null).map(([k, v]) => <li key={k}>{k}: {v}</li>)}
              <li>sampled {gpu.latest.ts.slice(11, 19)}</li>
            </ul>
          ) : <p>No telemetry yet.</p>}
        </article>
      ))}
    </section>
  );
}

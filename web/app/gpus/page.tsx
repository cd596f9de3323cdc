"use client";
// GPUs: the device timeline (every device's batches over the last five minutes, idle gaps visible),
// then a card per device with live charts of the last five minutes (utilization, memory, temperature,
// power) — history from the API, then every 1 Hz sample from the stream — and the job on it.
import { useMemo } from "react";
import { useDeviceTimeline, useGpuTelemetry, useGpus } from "../../src/lib/hooks";
import { DeviceTimeline } from "../../src/components/DeviceTimeline";
import type { Gpu } from "../../src/lib/queries";
import { TimeChart } from "../../src/components/TimeChart";
import { Card, Empty, ErrorState, Grid, Loading, Muted, Page, Title } from "../../src/ui/components";

const CHARTS = [
  ["DCGM_FI_DEV_GPU_UTIL", "Utilization", "%", 100],
  ["DCGM_FI_DEV_FB_USED", "Memory used", " MiB", undefined],
  ["DCGM_FI_DEV_GPU_TEMP", "Temperature", " °C", undefined],
  ["DCGM_FI_DEV_POWER_USAGE", "Power", " W", undefined],
] as const;

function DeviceCard({ gpu, index }: { gpu: Gpu; index: number }) {
  const telemetry = useGpuTelemetry(gpu.uuid);
  const series = useMemo(() => {
    const samples = telemetry.data ?? [];
    const xs = samples.map((s) => Date.parse(s.ts) / 1000);
    return { xs, fields: Object.fromEntries(CHARTS.map(([field]) => [field, samples.map((s) => s.fields[field] ?? null)])) };
  }, [telemetry.data]);
  return (
    <Card aria-label={gpu.name} data-device={gpu.uuid} data-state={gpu.state} style={gpu.state === "gone" ? { opacity: 0.6 } : undefined}>
      <h2>{gpu.name}</h2>
      <p style={{ margin: "0 0 0.5rem" }} data-testid="device-state">
        {gpu.state === "gone"
          ? <><strong>Gone</strong> <Muted>— its worker or its machine stopped{gpu.gone_at ? ` at ${gpu.gone_at.slice(11, 19)}` : ""}; no job is sent to it</Muted></>
          : <>Serving</>}
        {gpu.host ? <Muted> · on {gpu.host}</Muted> : null}
      </p>
      <p style={{ margin: "0 0 0.5rem" }}>
        {gpu.simulated ? <><strong>Simulated</strong> <Muted>— scheduled like a GPU, computes on the CPU; only utilization and memory are measured</Muted></> : <Muted>{gpu.total_mem_mb ? `${gpu.total_mem_mb} MiB` : ""} {gpu.compute_capability ? `· sm ${gpu.compute_capability}` : ""}</Muted>}
      </p>
      <p style={{ margin: "0 0 0.5rem" }}>
        {gpu.state === "gone" ? null : gpu.busy ? <>Busy: {gpu.job_ids.length ? gpu.job_ids.map((id) => <a key={id} href={`/app/jobs/detail/?id=${id}`} style={{ marginRight: 6 }}>job {id.slice(0, 8)}</a>) : "another account's job"}</> : "Idle"}
      </p>
      <p style={{ margin: "0 0 0.5rem" }} data-testid="device-rate">
        {gpu.tiles_per_s != null
          ? <>{Math.round(gpu.tiles_per_s)} tiles/s <Muted>on its batches of the last 2 minutes: serial jobs go where they would finish first at these rates</Muted></>
          : <Muted>No batch in the last 2 minutes</Muted>}
      </p>
      {telemetry.isPending ? <Loading what="telemetry" /> : telemetry.isError ? <ErrorState error={telemetry.error} /> : (
        CHARTS.map(([field, label, unit, max]) => {
          const ys = series.fields[field];
          if (gpu.simulated && ys.every((v) => v === null) && field !== "DCGM_FI_DEV_GPU_UTIL") {
            return <p key={field} style={{ fontSize: "0.85rem" }}><Muted>{label}: no sensor on a simulated device</Muted></p>;
          }
          return <TimeChart key={field} label={label} unit={unit} xs={series.xs} ys={ys} max={max} height={90} />;
        })
      )}
      <p style={{ fontSize: "0.8rem", margin: 0 }}><Muted>Device {index + 1} · {gpu.uuid}{gpu.latest ? ` · last sample ${gpu.latest.ts.slice(11, 19)}` : ""}</Muted></p>
    </Card>
  );
}

export default function Gpus() {
  const gpus = useGpus();
  const timeline = useDeviceTimeline();
  return (
    <Page>
      <Title>GPUs</Title>
      {gpus.isPending ? <Loading what="devices" /> : gpus.isError ? <ErrorState error={gpus.error} /> : gpus.data.length === 0 ? (
        <Empty>No device has registered yet: each device registers when its worker starts (the `device-workers` process).</Empty>
      ) : (<>
        <Card aria-label="Device timeline" style={{ marginBottom: "1rem" }}>
          <h2>Timeline</h2>
          {timeline.isPending ? <Loading what="the device timeline" /> : timeline.isError ? <ErrorState error={timeline.error} />
            : <DeviceTimeline devices={gpus.data} timeline={timeline.data} />}
        </Card>
        <Grid min="22rem" aria-label="Devices">
          {gpus.data.map((gpu, i) => <DeviceCard key={gpu.uuid} gpu={gpu} index={i} />)}
        </Grid>
      </>)}
    </Page>
  );
}

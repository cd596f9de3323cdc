"use client";
// The device timeline: one lane per device, the batches it computed over the last minutes coloured by
// job, its idle time as the gaps between them. Hover a bar for its job, click it for the job's page;
// the jobs on screen are also listed as links (keyboard). Live: progress events add bars as batches
// commit (see live/liveEvents.ts); the window slides every second.
import { useTheme } from "@emotion/react";
import { useEffect, useMemo, useRef, useState } from "react";
import type { DeviceTimeline as Timeline, Gpu } from "../lib/queries";
import { TIMELINE_SECONDS } from "../live/queryKeys";
import { Muted } from "../ui/components";

const LANE = 26; // px per device
const LABEL = 190; // px of lane labels

/** A stable colour per job (the same on every render and every page). */
export function jobColor(jobId: string | null | undefined): string {
  if (!jobId) return "#9aa4b2";
  let hash = 0;
  for (const ch of jobId) hash = (hash * 31 + ch.charCodeAt(0)) | 0;
  return `hsl(${Math.abs(hash) % 360} 65% 48%)`;
}

/** "Simulated GPU 0 (simulated, computes on CPU)" → "Simulated GPU 0": the lane label fits. */
function shortName(name: string): string {
  const short = name.split(" (")[0];
  return short.length > 20 ? `${short.slice(0, 19)}…` : short;
}

function useNow(periodMs: number): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), periodMs);
    return () => clearInterval(timer);
  }, [periodMs]);
  return now;
}

export function DeviceTimeline({ devices, timeline }: { devices: Gpu[]; timeline: Timeline }) {
  const theme = useTheme();
  const now = useNow(1000);
  const box = useRef<HTMLDivElement>(null);
  const [width, setWidth] = useState(900);
  useEffect(() => {
    const el = box.current!;
    const observer = new ResizeObserver(() => setWidth(el.clientWidth));
    observer.observe(el);
    return () => observer.disconnect();
  }, []);
  const start = now - TIMELINE_SECONDS * 1000;
  const span = now - start;
  const plot = Math.max(width - LABEL, 100);

  const lanes = useMemo(() => devices.map((device) => {
    const bars = timeline.batches
      .filter((b) => b.device_uuid === device.uuid)
      .map((b) => ({ ...b, from: Date.parse(b.started_at), to: Date.parse(b.finished_at) }))
      .filter((b) => b.to >= start);
    const busyMs = bars.reduce((sum, b) => sum + Math.min(b.to, now) - Math.max(b.from, start), 0);
    return { device, bars, idle: 1 - busyMs / span };
  }), [devices, timeline.batches, start, now, span]);
  const jobs = useMemo(() => [...new Set(lanes.flatMap((l) => l.bars.map((b) => b.job_id)).filter(Boolean))] as string[], [lanes]);

  const x = (t: number) => LABEL + ((t - start) / span) * plot;
  const height = lanes.length * LANE + 18;
  return (
    <div ref={box} data-testid="device-timeline" data-bars={lanes.reduce((n, l) => n + l.bars.length, 0)}>
      <svg width="100%" height={height} role="img"
        aria-label={`Device timeline, last ${TIMELINE_SECONDS / 60} minutes: ${lanes.map((l) => `${l.device.name} idle ${Math.round(l.idle * 100)}%`).join(", ")}`}
        onClick={(e) => {
          const job = (e.target as Element).getAttribute("data-job");
          if (job) window.location.assign(`/app/jobs/detail/?id=${job}`);
        }}>
        {lanes.map((lane, i) => (
          <g key={lane.device.uuid} transform={`translate(0 ${i * LANE})`} data-device={lane.device.uuid}>
            <text x={0} y={16} fontSize={12} fill={theme.text}>{shortName(lane.device.name)}</text>
            <text x={LABEL - 6} y={16} fontSize={11} fill={theme.muted} textAnchor="end">{`idle ${Math.round(lane.idle * 100)}%`}</text>
            <rect x={LABEL} y={3} width={plot} height={LANE - 6} fill="none" stroke={theme.border} />
            {lane.bars.map((b) => (
              <rect key={b.started_at} x={x(Math.max(b.from, start))} y={4} height={LANE - 8}
                width={Math.max(x(Math.min(b.to, now)) - x(Math.max(b.from, start)), 1)}
                fill={jobColor(b.job_id)} data-job={b.job_id ?? undefined} style={{ cursor: b.job_id ? "pointer" : "default" }}>
                <title>{`${b.job_id ? `job ${b.job_id.slice(0, 8)}` : "another account's job"} · ${b.tiles} tiles · ${((b.to - b.from) / 1000).toFixed(2)} s`}</title>
              </rect>
            ))}
          </g>
        ))}
        <text x={LABEL} y={height - 3} fontSize={11} fill={theme.muted}>{`−${TIMELINE_SECONDS / 60} min`}</text>
        <text x={LABEL + plot} y={height - 3} fontSize={11} fill={theme.muted} textAnchor="end">now</text>
      </svg>
      <p style={{ margin: "0.25rem 0 0", fontSize: "0.85rem" }}>
        {jobs.length === 0 ? <Muted>No batch in the last {TIMELINE_SECONDS / 60} minutes: every device idle.</Muted> : <>
          <Muted>Jobs: </Muted>
          {jobs.map((id) => (
            <a key={id} href={`/app/jobs/detail/?id=${id}`} style={{ marginRight: 8 }}>
              <span aria-hidden style={{ display: "inline-block", width: 10, height: 10, background: jobColor(id), marginRight: 3 }} />
              job {id.slice(0, 8)}
            </a>
          ))}
        </>}
      </p>
    </div>
  );
}

"use client";
// Analytics: panels from /analytics (DuckDB over the Parquet exports; refreshed after jobs finish).
import { useMemo, useState } from "react";
import { useDailyVolume, useGpuSecondsPerKm2, useThroughputByDevice } from "../../src/lib/hooks";
import { TimeChart } from "../../src/components/TimeChart";
import { Card, Empty, ErrorState, Grid, Loading, Muted, Page, Title } from "../../src/ui/components";

const DAYS = [7, 30, 365] as const;
const fmt = (n: number | null | undefined, digits = 1) => (n == null ? "–" : n.toLocaleString(undefined, { maximumFractionDigits: digits }));
/** Small figures keep three significant digits (0.000412 GPU-s/km² is not 0); large ones, whole units. */
const sig = (n: number | null | undefined) =>
  n == null ? "–" : Math.abs(n) >= 1000 ? n.toLocaleString(undefined, { maximumFractionDigits: 0 }) : n.toLocaleString(undefined, { maximumSignificantDigits: 3 });

export default function Analytics() {
  const [days, setDays] = useState<(typeof DAYS)[number]>(30);
  const since = useMemo(() => new Date(Date.now() - days * 86400_000).toISOString().slice(0, 10), [days]);
  const throughput = useThroughputByDevice(since);
  const perKm2 = useGpuSecondsPerKm2(since);
  const daily = useDailyVolume(since);
  const dailySeries = useMemo(() => {
    const byDay = new Map<string, number>();
    for (const row of daily.data ?? []) byDay.set(row.day, (byDay.get(row.day) ?? 0) + row.tiles);
    const daysSorted = [...byDay.keys()].sort();
    return { xs: daysSorted.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000), ys: daysSorted.map((d) => byDay.get(d)!) };
  }, [daily.data]);
  return (
    <Page>
      <Title>Analytics</Title>
      <p style={{ margin: 0 }}>
        <label>Period <select value={days} onChange={(e) => setDays(Number(e.target.value) as typeof days)}>{DAYS.map((d) => <option key={d} value={d}>last {d} days</option>)}</select></label>{" "}
        <Muted>From the Parquet exports (DuckDB); they follow finished jobs within a minute.</Muted>
      </p>
      <Grid min="24rem">
        <Card aria-label="Throughput by device">
          <h2>Throughput by device</h2>
          {throughput.isPending ? <Loading what="throughput" /> : throughput.isError ? <ErrorState error={throughput.error} /> : throughput.data.length === 0 ? <Empty>No exported results yet.</Empty> : (
            <table style={{ width: "100%" }} aria-label="Throughput by device">
              <thead><tr><th scope="col" align="left">Device</th><th scope="col" align="right">Tiles</th><th scope="col" align="right">ms/tile</th><th scope="col" align="right">tiles/s</th></tr></thead>
              <tbody>{throughput.data.map((r) => (
                <tr key={r.device}><td>{r.device}{r.simulated && !/simulated/i.test(r.device) ? <Muted> (simulated)</Muted> : null}</td><td align="right">{fmt(r.tiles, 0)}</td><td align="right">{fmt(r.avg_inference_ms, 2)}</td><td align="right">{fmt(r.tiles_per_s)}</td></tr>
              ))}</tbody>
            </table>
          )}
        </Card>
        <Card aria-label="GPU-seconds per km²">
          <h2>GPU-seconds per km²</h2>
          {perKm2.isPending ? <Loading what="GPU-seconds per km²" /> : perKm2.isError ? <ErrorState error={perKm2.error} /> : perKm2.data.length === 0 ? <Empty>No exported runs yet.</Empty> : (
            <table style={{ width: "100%" }} aria-label="GPU-seconds per km²">
              <thead><tr><th scope="col" align="left">Account</th><th scope="col" align="right">Runs</th><th scope="col" align="right">GPU-s</th><th scope="col" align="right">km²</th><th scope="col" align="right">GPU-s/km²</th></tr></thead>
              <tbody>{perKm2.data.map((r) => (
                <tr key={r.account}><td>{r.account}</td><td align="right">{r.runs}</td><td align="right">{sig(r.gpu_seconds)}</td><td align="right">{sig(r.km2)}</td><td align="right">{sig(r.gpu_seconds_per_km2)}</td></tr>
              ))}</tbody>
            </table>
          )}
        </Card>
        <Card aria-label="Daily volume">
          <h2>Tiles per day</h2>
          {daily.isPending ? <Loading what="daily volume" /> : daily.isError ? <ErrorState error={daily.error} /> : daily.data.length === 0 ? <Empty>No exported jobs yet.</Empty> : (
            <TimeChart label="Tiles per day" unit="" xs={dailySeries.xs} ys={dailySeries.ys} height={160} kind="bars" step={86400} />
          )}
        </Card>
      </Grid>
    </Page>
  );
}

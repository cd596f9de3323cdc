"use client";
// Overview: queue depth, running jobs, GPUs busy, tiles/s now; over the last hour, the fleet's
// throughput, queue and pool saturation from Prometheus (through GET /fleet/history), so no restart
// of the API or the browser loses the history.
import { useMemo, type ReactNode } from "react";
import { apiKey } from "../src/lib/api";
import { useFleetHistory, useGpus, useJobSummary } from "../src/lib/hooks";
import { TimeChart } from "../src/components/TimeChart";
import { Card, ErrorState, Grid, Loading, Muted, Page, Stat, Title } from "../src/ui/components";

const HISTORY_SECONDS = 3600;

// [unix seconds, value] points of one named series (openapi-fetch widens the pairs to number[]).
function seriesOf(history: { series: { name: string; points: number[][] }[] } | undefined, name: string, scale = 1) {
  const points = history?.series.find((s) => s.name === name)?.points ?? [];
  return { xs: points.map(([t]) => t), ys: points.map(([, v]) => v * scale) };
}

export default function Overview() {
  const summary = useJobSummary();
  const gpus = useGpus();
  const history = useFleetHistory(HISTORY_SECONDS);
  const charts = useMemo(() => ({
    tiles: seriesOf(history.data, "tiles_per_s"),
    queued: seriesOf(history.data, "queued"),
    running: seriesOf(history.data, "running"),
    saturation: seriesOf(history.data, "pool_saturation", 100),
  }), [history.data]);
  if (typeof window !== "undefined" && !apiKey()) {
    return <p>Welcome to Constellation. First <a href="/app/signin/">enter your API key</a>.</p>;
  }
  if (summary.isPending) return <Loading what="the overview" />;
  if (summary.isError) return <ErrorState error={summary.error} />;
  const counts = summary.data.counts;
  const busy = gpus.data?.filter((g) => g.busy).length;
  const step = history.data ? ` every ${history.data.step_s} s` : "";
  const chart = (body: ReactNode) =>
    history.isPending ? <Loading what="the fleet's history" /> : history.isError ? <ErrorState error={history.error} /> : body;
  return (
    <Page>
      <Title>Overview</Title>
      <Grid min="11rem" aria-label="Figures">
        <Card><Stat><span>Queued</span><strong data-testid="queued">{counts.queued ?? 0}</strong><a href="/app/jobs/">see jobs</a></Stat></Card>
        <Card><Stat><span>Running</span><strong data-testid="running">{counts.running ?? 0}</strong></Stat></Card>
        <Card><Stat><span>GPUs busy</span><strong>{gpus.data ? `${busy} / ${gpus.data.length}` : "–"}</strong><a href="/app/gpus/">see devices</a></Stat></Card>
        <Card><Stat><span>Tiles/s now</span><strong>{summary.data.tiles_per_s.toLocaleString()}</strong><Muted>last 2 minutes</Muted></Stat></Card>
        <Card><Stat><span>Finished</span><strong>{(counts.succeeded ?? 0).toLocaleString()}</strong><Muted>{counts.failed ?? 0} failed · {counts.canceled ?? 0} canceled</Muted></Stat></Card>
      </Grid>
      <Card aria-label="Throughput">
        <h2>Tiles/s over the last hour <Muted>(all devices; Prometheus, a point{step})</Muted></h2>
        {chart(<TimeChart label="Tiles/s" unit="" xs={charts.tiles.xs} ys={charts.tiles.ys} height={180} />)}
      </Card>
      <Grid min="22rem" aria-label="Fleet history">
        <Card aria-label="Queue">
          <h2>Jobs over the last hour <Muted>(the whole fleet)</Muted></h2>
          {chart(<>
            <TimeChart label="Queued" unit="" xs={charts.queued.xs} ys={charts.queued.ys} height={110} />
            <TimeChart label="Running" unit="" xs={charts.running.xs} ys={charts.running.ys} height={110} />
          </>)}
        </Card>
        <Card aria-label="Pool saturation">
          <h2>Device slots in use <Muted>(all pools)</Muted></h2>
          {chart(<TimeChart label="Slots in use" unit="%" max={100} xs={charts.saturation.xs} ys={charts.saturation.ys} height={240} />)}
        </Card>
      </Grid>
    </Page>
  );
}

"use client";
// Overview: queue depth, running jobs, GPUs busy, tiles/s now and per minute over the last hour.
import { useMemo } from "react";
import { apiKey } from "../src/lib/api";
import { useGpus, useJobSummary } from "../src/lib/hooks";
import { TimeChart } from "../src/components/TimeChart";
import { Card, ErrorState, Grid, Loading, Muted, Page, Stat, Title } from "../src/ui/components";

export default function Overview() {
  const summary = useJobSummary();
  const gpus = useGpus();
  const perMinute = useMemo(() => {
    // Every minute of the last hour, zeros included, so the chart's time axis is honest.
    const counts = new Map((summary.data?.tiles_per_minute ?? []).map((m) => [Math.floor(Date.parse(m.minute) / 60000), m.tiles]));
    const now = Math.floor(Date.now() / 60000);
    const minutes = Array.from({ length: 60 }, (_, i) => now - 59 + i);
    return { xs: minutes.map((m) => m * 60), ys: minutes.map((m) => (counts.get(m) ?? 0) / 60) };
  }, [summary.data]);
  if (typeof window !== "undefined" && !apiKey()) {
    return <p>Welcome to Constellation. First <a href="/app/signin/">enter your API key</a>.</p>;
  }
  if (summary.isPending) return <Loading what="the overview" />;
  if (summary.isError) return <ErrorState error={summary.error} />;
  const counts = summary.data.counts;
  const busy = gpus.data?.filter((g) => g.busy).length;
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
        <h2>Tiles/s over the last hour <Muted>(per-minute average)</Muted></h2>
        <TimeChart label="Tiles/s" unit="" xs={perMinute.xs} ys={perMinute.ys} height={180} kind="bars" />
      </Card>
    </Page>
  );
}

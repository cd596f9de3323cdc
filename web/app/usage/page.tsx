"use client";
// Usage (from usage_go): the leaderboard by a metric over a window, and one account's totals per window.
import { useState } from "react";
import { useAccountUsage, useLeaderboard } from "../../src/lib/hooks";
import type { Metric, Window } from "../../src/lib/queries";
import { Button, Card, Empty, ErrorState, Loading, Muted, Page, Title } from "../../src/ui/components";

const METRICS: [Metric, string][] = [["gpu_seconds", "GPU-seconds"], ["tiles", "Tiles"], ["jobs", "Jobs"], ["energy", "Energy (J)"]];
const WINDOWS: Window[] = ["day", "week", "month", "all"];
const fmt = (n: number) => (Number.isInteger(n) ? n.toLocaleString() : n.toLocaleString(undefined, { maximumFractionDigits: 1 }));

export default function Usage() {
  const [window, setWindow] = useState<Window>("week");
  const [metric, setMetric] = useState<Metric>("gpu_seconds");
  const [account, setAccount] = useState<string>("");
  const board = useLeaderboard(window, metric);
  const detail = useAccountUsage(account);
  return (
    <Page>
      <Title>Usage</Title>
      <Card as="form" aria-label="Usage window" onSubmit={(e) => e.preventDefault()} style={{ display: "flex", gap: "1rem", flexWrap: "wrap" }}>
        <label>Window <select value={window} onChange={(e) => setWindow(e.target.value as Window)}>{WINDOWS.map((w) => <option key={w}>{w}</option>)}</select></label>
        <label>Rank by <select value={metric} onChange={(e) => setMetric(e.target.value as Metric)}>{METRICS.map(([m, l]) => <option key={m} value={m}>{l}</option>)}</select></label>
      </Card>
      <Card aria-label="Leaderboard">
        <h2>Leaderboard</h2>
        {board.isPending ? <Loading what="the leaderboard" /> : board.isError ? <ErrorState error={board.error} /> : board.data.data.length === 0 ? (
          <Empty>No usage in this window.</Empty>
        ) : (
          <table aria-label="Leaderboard" style={{ borderCollapse: "collapse", width: "100%" }}>
            <thead><tr><th scope="col" align="left">#</th><th scope="col" align="left">Account</th>{METRICS.map(([m, l]) => <th key={m} scope="col" align="right">{l}</th>)}</tr></thead>
            <tbody>
              {board.data.data.map((u, i) => (
                <tr key={u.account_id}>
                  <td>{u.rank ?? "—"}</td>
                  <td><Button variant="plain" onClick={() => setAccount(u.account_id)} aria-label={`Show ${u.account_name}'s usage`}>{u.account_name}</Button></td>
                  <td align="right">{fmt(u.gpu_seconds)}</td><td align="right">{fmt(u.tiles)}</td><td align="right">{fmt(u.jobs)}</td><td align="right">{fmt(u.energy_joules)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Card>
      <Card aria-label="Account usage">
        <h2>Account</h2>
        {!account ? <Muted>Pick an account on the leaderboard.</Muted> : detail.isPending ? <Loading what="usage" /> : detail.isError ? <ErrorState error={detail.error} /> : (
          <table aria-label="Account usage by window" style={{ borderCollapse: "collapse", width: "100%" }}>
            <caption style={{ textAlign: "left" }}>{detail.data[0]?.account_name}</caption>
            <thead><tr><th scope="col" align="left">Window</th>{METRICS.map(([m, l]) => <th key={m} scope="col" align="right">{l}</th>)}</tr></thead>
            <tbody>{detail.data.map((u) => (
              <tr key={u.window}><td>{u.window}</td><td align="right">{fmt(u.gpu_seconds)}</td><td align="right">{fmt(u.tiles)}</td><td align="right">{fmt(u.jobs)}</td><td align="right">{fmt(u.energy_joules)}</td></tr>
            ))}</tbody>
          </table>
        )}
        <p><Muted>Energy is measured on NVIDIA GPUs only (NVML); simulated devices report none.</Muted></p>
      </Card>
    </Page>
  );
}

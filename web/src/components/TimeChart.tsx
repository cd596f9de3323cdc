"use client";
// A uPlot time series: created once, fed with setData on every update (cheap at 1 Hz), resized with
// its container. The wrapper reports how many points it holds (data-points) and the time of the
// latest (data-last, unix seconds) and its highest value (data-peak) for tests and for people
// reading the DOM with assistive tech, plus a text summary of the latest value.
import { useTheme } from "@emotion/react";
import { useEffect, useRef } from "react";
import uPlot from "uplot";

export interface TimeChartProps {
  label: string;
  unit: string;
  xs: number[]; // unix seconds
  ys: (number | null)[];
  color?: string;
  height?: number;
  max?: number;
  kind?: "line" | "bars";
  step?: number; // seconds between bars (60 for per-minute, 86400 for per-day)
}

export function TimeChart({ label, unit, xs, ys, color, height = 120, max, kind = "line", step = 60 }: TimeChartProps) {
  const theme = useTheme();
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const stroke = color ?? theme.chart[0];

  useEffect(() => {
    const el = box.current!;
    const axis = { stroke: theme.muted, grid: { stroke: theme.border, width: 1 }, ticks: { stroke: theme.border, width: 1 } };
    const u = new uPlot({
      width: Math.max(200, el.clientWidth),
      height,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: {
          time: true,
        },
        y: max !== undefined ? { range: [0, max] } : { range: (_u, lo, hi) => [Math.min(0, lo), Math.max(1, hi)] } },
      axes: [axis, { ...axis, size: 64, values: (_u, vals) => vals.map((v) => `${v.toLocaleString()}${unit}`) }],
      series: [{}, { label, stroke, width: 2, fill: `${stroke}22`, spanGaps: false, paths: kind === "bars" ? uPlot.paths.bars!({ size: [0.8, 40] }) : undefined, points: kind === "bars" ? { show: false } : {} }],
    }, [[], []], el);
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height }));
    resize.observe(el);
    return () => { resize.disconnect(); u.destroy(); plot.current = null; };
  }, [theme, stroke, height, max, unit, label, kind, step]);

  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    u.setData([xs, ys]);
    if (kind === "bars" && xs.length) {
      // The time axis spans the bars (at least seven steps, ending at the last), not uPlot's guess: a
      // single bar otherwise got an axis years wide.
      const last = xs[xs.length - 1];
      u.setScale("x", { min: Math.min(xs[0], last - 6 * step) - step * 0.6, max: last + step * 0.6 });
    }
  }, [xs, ys, theme, kind, step]);

  const last = ys.length ? ys[ys.length - 1] : null;
  const peak = ys.reduce<number | null>((top, y) => (y != null && (top == null || y > top) ? y : top), null);
  return (
    <figure style={{ margin: 0 }} aria-label={`${label} chart`} data-points={xs.length}
      data-last={xs.length ? xs[xs.length - 1] : undefined} data-peak={peak ?? undefined}>
      <figcaption style={{ fontSize: "0.85rem", color: theme.muted }}>
        {label}: {last == null ? "–" : `${(Math.round(last * 10) / 10).toLocaleString()}${unit}`}
      </figcaption>
      <div ref={box} />
    </figure>
  );
}

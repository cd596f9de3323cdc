import { QueryClient } from "@tanstack/query-core";
import { afterEach, describe, expect, it, vi } from "vitest";
import { applyMessage, LIST_REFRESH_MS, openLiveEvents, type JobDetail, type SocketLike, type StreamEvent } from "./liveEvents";
import { gpuKeys, jobKeys } from "./queryKeys";

const JOB = "7b0c1a52-7a47-4f7e-9a55-3f8f2b0f3c11";

function job(overrides: Partial<JobDetail> = {}): JobDetail {
  return {
    id: JOB, name: "test", zoom: 14, model: "landcover-cnn", batch_size: 32, priority: 0, mode: "serial",
    state: "queued", submitted_by: "alice", created_at: "2026-11-27T10:00:00Z", updated_at: "2026-11-27T10:00:00Z",
    finished_at: null, tiles_total: 100, tiles_done: 0, progress: 0, area: {}, area_id: null,
    dagster_run_id: null, dagit_url: null, error: null, runs: [], queue_position: 3, tiles_per_s: null,
    eta_seconds: null, ...overrides,
  } as JobDetail;
}

function state(id: number, value: string): StreamEvent {
  return { id, type: "job.state", account_id: null, run_id: null, job_id: JOB, payload: { state: value }, ts: `2026-11-27T10:00:${String(id).padStart(2, "0")}Z` } as StreamEvent;
}

function progress(id: number, done: number): StreamEvent {
  return { id, type: "job.progress", account_id: null, run_id: null, job_id: JOB, payload: { tiles_done: done, tiles_total: 100, tiles_per_s: 50 }, ts: "2026-11-27T10:00:30Z" } as StreamEvent;
}

function cachedJob(client: QueryClient): JobDetail {
  return client.getQueryData<JobDetail>(jobKeys.detail(JOB))!;
}

function clientWithJob(): QueryClient {
  const client = new QueryClient();
  client.setQueryData(jobKeys.detail(JOB), job());
  return client;
}

describe("applyMessage", () => {
  it("adds each committed batch to the device timeline once, and forgets batches past its window", () => {
    const client = clientWithJob();
    const old = { device_uuid: "GPU-0", job_id: "other", tiles: 8, started_at: "2026-11-27T09:00:00Z", finished_at: "2026-11-27T09:00:01Z" };
    client.setQueryData(gpuKeys.timeline(), { since: "2026-11-27T08:59:00Z", until: "2026-11-27T09:00:01Z", batches: [old] });
    const batch = { tiles: 32, started_at: "2026-11-27T10:00:29.5Z", finished_at: "2026-11-27T10:00:30Z" };
    const event = { ...progress(2, 32), payload: { tiles_done: 32, tiles_total: 100, device: "GPU-1", batch } } as StreamEvent;
    applyMessage(client, event);
    applyMessage(client, { ...event, id: 3 } as StreamEvent); // the same batch again (a replay): still one bar
    const timeline = client.getQueryData<{ batches: unknown[] }>(gpuKeys.timeline())!;
    expect(timeline.batches).toEqual([{ device_uuid: "GPU-1", job_id: JOB, ...batch }]);
  });

  it("moves a job forward with its events", () => {
    const client = clientWithJob();
    applyMessage(client, state(1, "running"));
    applyMessage(client, progress(2, 40));
    expect(cachedJob(client)).toMatchObject({ state: "running", tiles_done: 40, progress: 0.4, queue_position: null, eta_seconds: 1.2 });
  });

  it("ignores an event that arrives after a newer one (out of order)", () => {
    const client = clientWithJob();
    applyMessage(client, progress(5, 60));
    applyMessage(client, progress(4, 30)); // from the other device, delivered late
    expect(cachedJob(client).tiles_done).toBe(60);
    applyMessage(client, state(6, "succeeded"));
    applyMessage(client, state(2, "running")); // a late `running` never resurrects a finished job
    expect(cachedJob(client)).toMatchObject({ state: "succeeded", finished_at: "2026-11-27T10:00:06Z" });
  });

  it("applies a duplicate once", () => {
    const client = clientWithJob();
    applyMessage(client, progress(3, 10));
    const before = cachedJob(client);
    applyMessage(client, progress(3, 10));
    expect(cachedJob(client)).toBe(before); // not even a new object: nothing re-renders
    expect(before.tiles_done).toBe(10);
  });

  it("patches loaded list rows once per window and marks lists stale once for a burst with a state change", () => {
    vi.useFakeTimers();
    const client = new QueryClient();
    const invalidate = vi.spyOn(client, "invalidateQueries");
    const key = jobKeys.list({ state: ["running"] });
    client.setQueryData(key, { pages: [{ data: [job({ state: "queued" })], next_cursor: null }], pageParams: [undefined] });
    const writes = vi.fn();
    const unsubscribe = client.getQueryCache().subscribe((e) => { if (e.type === "updated" && e.action.type === "success") writes(); });
    applyMessage(client, state(1, "running"));
    for (let id = 2; id < 200; id++) applyMessage(client, progress(id, Math.min(id, 100)));
    expect(invalidate).not.toHaveBeenCalled();
    expect(writes).not.toHaveBeenCalled();
    vi.advanceTimersByTime(LIST_REFRESH_MS);
    expect(writes).toHaveBeenCalledTimes(1); // 199 events, one write
    expect(invalidate).toHaveBeenCalledTimes(2); // the lists and the summary, once each
    expect(client.getQueryState(key)?.isInvalidated).toBe(true);
    const row = (client.getQueryData(key) as { pages: { data: JobDetail[] }[] }).pages[0].data[0];
    expect(row).toMatchObject({ state: "running", tiles_done: 100, progress: 1 });
    expect(client.getQueryData(jobKeys.detail(JOB))).toBeUndefined(); // an uncached detail stays uncached
    unsubscribe();
    vi.useRealTimers();
  });

  it("patches progress into list rows without refetching the lists", () => {
    vi.useFakeTimers();
    const client = new QueryClient();
    const invalidate = vi.spyOn(client, "invalidateQueries");
    const key = jobKeys.list({});
    client.setQueryData(key, { pages: [{ data: [job({ state: "running" })], next_cursor: null }], pageParams: [undefined] });
    applyMessage(client, progress(8, 30));
    applyMessage(client, progress(7, 20)); // late, older
    vi.advanceTimersByTime(LIST_REFRESH_MS);
    expect(invalidate).not.toHaveBeenCalled();
    const row = (client.getQueryData(key) as { pages: { data: JobDetail[] }[] }).pages[0].data[0];
    expect(row).toMatchObject({ tiles_done: 30, tiles_per_s: 50, eta_seconds: 1.4 });
    vi.useRealTimers();
  });

  it("appends each event once, in id order, to a job's cached event list", () => {
    const client = new QueryClient();
    client.setQueryData(jobKeys.events(JOB), [state(1, "queued")]);
    applyMessage(client, progress(3, 10));
    applyMessage(client, state(2, "running")); // late
    applyMessage(client, progress(3, 10)); // duplicate
    expect((client.getQueryData(jobKeys.events(JOB)) as StreamEvent[]).map((e) => e.id)).toEqual([1, 2, 3]);
  });

  it("appends GPU samples to a device's cached series and keeps five minutes", () => {
    const client = new QueryClient();
    const sample = (ts: string, util: number) => ({ type: "gpu.metrics", device_uuid: "GPU-1", name: "sim", simulated: true, ts, job_id: null, pids: [], fields: { DCGM_FI_DEV_GPU_UTIL: util } });
    client.setQueryData(gpuKeys.telemetry("GPU-1"), [sample("2026-11-27T10:00:00Z", 1)]);
    applyMessage(client, sample("2026-11-27T10:04:00Z", 2) as never);
    applyMessage(client, sample("2026-11-27T10:04:00Z", 2) as never); // a repeat
    applyMessage(client, sample("2026-11-27T10:05:30Z", 3) as never);
    const series = client.getQueryData(gpuKeys.telemetry("GPU-1")) as { fields: Record<string, number> }[];
    expect(series.map((s) => s.fields.DCGM_FI_DEV_GPU_UTIL)).toEqual([2, 3]);
  });
});

class FakeSocket implements SocketLike {
  onopen: (() => void) | null = null;
  onmessage: ((message: { data: string }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;
  closed = false;
  constructor(readonly url: string) {}
  send(event: StreamEvent) { this.onmessage?.({ data: JSON.stringify(event) }); }
  drop() { this.onclose?.({ code: 1006 }); }
  open() { this.onopen?.(); }
  close() { this.closed = true; }
}

describe("openLiveEvents", () => {
  afterEach(() => vi.useRealTimers());

  it("resumes after a drop from the last event id, and replays change nothing", () => {
    vi.useFakeTimers();
    const client = clientWithJob();
    const sockets: FakeSocket[] = [];
    const stop = openLiveEvents({
      url: "ws://api/stream?gpus=true", client, reconnectDelayMs: 500,
      connect: (url) => { const socket = new FakeSocket(url); sockets.push(socket); return socket; },
    });
    sockets[0].send(state(1, "running"));
    sockets[0].send(progress(2, 20));
    sockets[0].drop();
    vi.advanceTimersByTime(500);
    expect(sockets[1].url).toBe("ws://api/stream?gpus=true&after=2");
    sockets[1].send(progress(2, 20)); // a server replay overlapping what was seen
    sockets[1].send(progress(3, 70));
    sockets[1].send(state(4, "succeeded"));
    expect(cachedJob(client)).toMatchObject({ state: "succeeded", tiles_done: 70 });
    stop();
    expect(sockets[1].closed).toBe(true);
    sockets[1].drop();
    vi.advanceTimersByTime(5000);
    expect(sockets).toHaveLength(2); // closed for good: no reconnect
  });

  it("reports open, then reconnecting after a drop, then open again", () => {
    vi.useFakeTimers();
    const statuses: string[] = [];
    const sockets: FakeSocket[] = [];
    const stop = openLiveEvents({
      url: "ws://api/stream", client: new QueryClient(), reconnectDelayMs: 100, onStatus: (s) => statuses.push(s),
      connect: (url) => { const socket = new FakeSocket(url); sockets.push(socket); return socket; },
    });
    sockets[0].open();
    sockets[0].drop();
    vi.advanceTimersByTime(100);
    sockets[1].open();
    expect(statuses).toEqual(["open", "reconnecting", "open"]);
    stop();
  });

  it("stops and reports a revoked key when the server closes with a policy violation", () => {
    vi.useFakeTimers();
    const statuses: string[] = [];
    const sockets: FakeSocket[] = [];
    const stop = openLiveEvents({
      url: "ws://api/stream", client: new QueryClient(), reconnectDelayMs: 100, onStatus: (s) => statuses.push(s),
      connect: (url) => { const socket = new FakeSocket(url); sockets.push(socket); return socket; },
    });
    sockets[0].open();
    sockets[0].onclose?.({ code: 1008 });
    vi.advanceTimersByTime(1000);
    expect(statuses).toEqual(["open", "revoked"]);
    expect(sockets).toHaveLength(1); // the same key would be refused: no reconnect loop
    stop();
  });
});

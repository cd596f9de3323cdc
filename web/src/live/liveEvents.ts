// The dashboard's one live-events channel: WS /stream messages update the TanStack Query cache.
//
// - A job's event patches its cached detail (setQueryData) — only when the event is newer than what
//   that job's detail already reflects, so duplicates and out-of-order arrivals (events from different
//   devices race on the wire) never move a job backwards. It is appended to the job's cached event
//   list (logs and state timeline) once.
// - Job lists: progress and state are patched into the rows already loaded, in one pass per
//   LIST_REFRESH_MS for all events of that window (hundreds of events a second cost a few renders,
//   not hundreds). Events that can change which jobs a list holds or their order (a new job, a state
//   change) also mark the lists and the summary stale (invalidateQueries), at most once per window.
// - GPU samples patch the cached GPU list and append to each device's cached telemetry series.
// - The channel remembers the last event id and, after a drop, reconnects with `after=<that id>`:
//   the server replays what was missed, and replays of events already applied change nothing.
import type { InfiniteData, QueryClient } from "@tanstack/query-core";
import type { components } from "../api/schema";
import { TERMINAL_STATES } from "../lib/vocabulary";
import { TIMELINE_SECONDS, gpuKeys, jobKeys } from "./queryKeys";

export type StreamEvent = components["schemas"]["StreamEvent"];
export type GpuSample = components["schemas"]["StreamGpuSample"];
export type JobDetail = components["schemas"]["JobDetail"];
export type Gpu = components["schemas"]["GpuPublic"];
type ServerMessage = components["schemas"]["StreamServerMessage"];
type ListRow = components["schemas"]["JobPublic"] & { tiles_per_s?: number | null; eta_seconds?: number | null };
type ListPage = { data: ListRow[]; next_cursor: string | null };
type EventRow = components["schemas"]["Event"];
type DeviceBatch = components["schemas"]["DeviceBatch"];
type DeviceTimeline = components["schemas"]["DeviceTimeline"];

export const LIST_REFRESH_MS = 250;
export const TELEMETRY_WINDOW_MS = 5 * 60 * 1000;

interface ClientState {
  applied: Map<string, number>; // job id → the newest event id reflected in the cache
  pending: Map<string, StreamEvent[]>; // job id → events not yet patched into the lists
  invalidate: boolean; // the lists' membership or order may have changed
  timer: ReturnType<typeof setTimeout> | undefined;
}

const states = new WeakMap<QueryClient, ClientState>();

function stateOf(client: QueryClient): ClientState {
  let s = states.get(client);
  if (!s) states.set(client, (s = { applied: new Map(), pending: new Map(), invalidate: false, timer: undefined }));
  return s;
}

function flushLists(client: QueryClient): void {
  const s = stateOf(client);
  s.timer = undefined;
  const pending = s.pending;
  s.pending = new Map();
  if (pending.size) {
    // One pass over each cached list: a row changes only when one of its events arrived.
    for (const [key, data] of client.getQueriesData<InfiniteData<ListPage> | ListPage>({ queryKey: jobKeys.lists() })) {
      if (!data) continue;
      const patchPage = (page: ListPage): ListPage => {
        let changed = false;
        const rows = page.data.map((row) => {
          const events = pending.get(row.id);
          if (!events) return row;
          changed = true;
          return events.reduce(patchJob, row);
        });
        return changed ? { ...page, data: rows } : page;
      };
      const next = "pages" in data ? { ...data, pages: data.pages.map(patchPage) } : patchPage(data);
      const changed = "pages" in data
        ? (next as InfiniteData<ListPage>).pages.some((p, i) => p !== data.pages[i])
        : next !== data;
      if (changed) client.setQueryData(key, next);
    }
  }
  if (s.invalidate) {
    s.invalidate = false;
    void client.invalidateQueries({ queryKey: jobKeys.lists() });
    void client.invalidateQueries({ queryKey: jobKeys.summary() });
  }
}

function scheduleLists(client: QueryClient): void {
  const s = stateOf(client);
  if (s.timer === undefined) s.timer = setTimeout(() => flushLists(client), LIST_REFRESH_MS);
}

/** Apply one stream message to the cache. Returns the event id it carried, if any. */
export function applyMessage(client: QueryClient, message: ServerMessage): number | undefined {
  if (message.type === "gpu.metrics") {
    applySample(client, message as GpuSample);
    return undefined;
  }
  if (!("id" in message) || typeof message.id !== "number" || !("job_id" in message)) return undefined;
  const event = message as StreamEvent;
  const jobId = event.job_id;
  if (!jobId) return event.id;
  const s = stateOf(client);
  // The job's cached event list (logs, timeline) takes every event once, in id order.
  client.setQueryData<EventRow[]>(jobKeys.events(jobId), (events) => insertEvent(events, event));
  if ((s.applied.get(jobId) ?? 0) >= event.id) return event.id; // a duplicate or an older event: nothing to do
  s.applied.set(jobId, event.id);
  client.setQueryData<JobDetail>(jobKeys.detail(jobId), (job) => (job ? patchJob(job, event) : job));
  if (event.type === "job.state" || event.type === "job.progress") {
    const queued = s.pending.get(jobId);
    if (queued) queued.push(event);
    else s.pending.set(jobId, [event]);
  }
  if (event.type === "job.state") s.invalidate = true;
  if (event.type === "job.progress") applyBatch(client, event);
  scheduleLists(client);
  return event.id;
}

/** A progress event names the batch it committed and its interval on the device: the timeline's bar. */
function applyBatch(client: QueryClient, event: StreamEvent): void {
  const payload = event.payload as { device?: string; batch?: { tiles: number; started_at: string; finished_at: string } };
  if (!payload.device || !payload.batch || !event.job_id) return;
  const bar: DeviceBatch = { device_uuid: payload.device, job_id: event.job_id, ...payload.batch };
  client.setQueryData<DeviceTimeline>(gpuKeys.timeline(), (timeline) => {
    if (!timeline) return timeline;
    if (timeline.batches.some((b) => b.device_uuid === bar.device_uuid && b.started_at === bar.started_at)) return timeline;
    const since = new Date(Date.parse(bar.finished_at) - TIMELINE_SECONDS * 1000).toISOString();
    const kept = timeline.batches.filter((b) => b.finished_at >= since);
    return { since, until: bar.finished_at > timeline.until ? bar.finished_at : timeline.until, batches: [...kept, bar] };
  });
}

function insertEvent(events: EventRow[] | undefined, event: StreamEvent): EventRow[] | undefined {
  if (!events) return events;
  if (events.some((e) => e.id === event.id)) return events;
  const row = event as unknown as EventRow;
  if (!events.length || events[events.length - 1].id < event.id) return [...events, row];
  return [...events, row].sort((a, b) => a.id - b.id);
}

function applySample(client: QueryClient, sample: GpuSample): void {
  client.setQueryData<Gpu[]>(gpuKeys.all, (gpus) =>
    gpus?.map((gpu) => (gpu.uuid === sample.device_uuid ? { ...gpu, latest: sample } : gpu)),
  );
  client.setQueryData<GpuSample[]>(gpuKeys.telemetry(sample.device_uuid), (series) => {
    if (!series) return series;
    if (series.length && series[series.length - 1].ts >= sample.ts) return series; // a repeat
    const cutoff = Date.parse(sample.ts) - TELEMETRY_WINDOW_MS;
    const kept = series.length && Date.parse(series[0].ts) < cutoff ? series.filter((s) => Date.parse(s.ts) >= cutoff) : series;
    return [...kept, sample];
  });
}

function patchJob<J extends ListRow | JobDetail>(job: J, event: StreamEvent): J {
  const payload = event.payload as Record<string, unknown>;
  if (event.type === "job.state" && typeof payload.state === "string") {
    const state = payload.state as JobDetail["state"];
    if (TERMINAL_STATES.has(job.state) && !TERMINAL_STATES.has(state)) return job; // a finished job stays finished
    return {
      ...job,
      state,
      updated_at: event.ts,
      finished_at: TERMINAL_STATES.has(state) ? event.ts : job.finished_at,
      ...("queue_position" in job ? { queue_position: state === "queued" ? job.queue_position : null } : {}),
      ...(TERMINAL_STATES.has(state) ? { eta_seconds: null } : {}),
      error: typeof payload.error === "string" ? payload.error : job.error,
    };
  }
  if (event.type === "job.progress" && typeof payload.tiles_done === "number") {
    const total = typeof payload.tiles_total === "number" ? payload.tiles_total : job.tiles_total;
    const rate = typeof payload.tiles_per_s === "number" ? payload.tiles_per_s : job.tiles_per_s;
    const done = Math.max(job.tiles_done, payload.tiles_done);
    if (done === job.tiles_done && rate === job.tiles_per_s) return job;
    return {
      ...job,
      tiles_done: done,
      tiles_total: total,
      progress: total ? done / total : job.progress,
      tiles_per_s: rate,
      eta_seconds: rate && total ? Math.max(0, (total - done) / rate) : job.eta_seconds,
    };
  }
  return job;
}

export interface SocketLike {
  onopen: (() => void) | null;
  onmessage: ((message: { data: string }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
  close(): void;
}

export interface LiveEventsOptions {
  url: string; // ws://host/stream?gpus=true (no `after`: the channel adds it)
  protocols?: string[]; // the key goes here (`bearer.<key>`), never in the URL
  client: QueryClient;
  connect?: (url: string) => SocketLike; // a real WebSocket by default
  reconnectDelayMs?: number;
  onStatus?: (status: "open" | "reconnecting" | "revoked") => void;
}

/** The server closed the socket because the key stopped working (revoked, account disabled). */
export const POLICY_VIOLATION = 1008;

/** Open the live channel; returns a function that closes it for good. */
export function openLiveEvents({ url, protocols, client, connect, reconnectDelayMs = 1000, onStatus }: LiveEventsOptions): () => void {
  const open = connect ?? ((u: string) => new WebSocket(u, protocols) as unknown as SocketLike);
  let lastEventId = 0;
  let closed = false;
  let socket: SocketLike | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const start = () => {
    const separator = url.includes("?") ? "&" : "?";
    socket = open(lastEventId ? `${url}${separator}after=${lastEventId}` : url);
    socket.onopen = () => onStatus?.("open");
    socket.onmessage = ({ data }) => {
      const id = applyMessage(client, JSON.parse(data) as ServerMessage);
      if (id !== undefined && id > lastEventId) lastEventId = id;
    };
    socket.onclose = ({ code }) => {
      if (closed) return;
      if (code === POLICY_VIOLATION) {
        onStatus?.("revoked"); // reconnecting with the same key would be refused: sign in again
        return;
      }
      onStatus?.("reconnecting");
      timer = setTimeout(start, reconnectDelayMs);
    };
  };
  start();
  return () => {
    closed = true;
    clearTimeout(timer);
    socket?.close();
  };
}

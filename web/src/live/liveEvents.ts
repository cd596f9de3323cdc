// The dashboard's one live-events channel: WS /stream messages update the TanStack Query cache.
//
// - A job's state/progress event patches its cached detail (setQueryData) — only when the event is
//   newer than what that job's detail already reflects, so duplicates and out-of-order arrivals
//   (events from different devices race on the wire) never move a job backwards.
// - Job events mark the job lists stale (invalidateQueries), at most once per LIST_REFRESH_MS: their
//   order and filters are the server's to compute, and hundreds of progress events a second must not
//   turn into hundreds of list requests.
// - GPU samples patch the cached GPU list.
// - The channel remembers the last event id and, after a drop, reconnects with `after=<that id>`:
//   the server replays what was missed, and replays of events already applied change nothing.
import type { QueryClient } from "@tanstack/query-core";
import type { components } from "../api/schema";
import { gpuKeys, jobKeys } from "./queryKeys";

export type StreamEvent = components["schemas"]["StreamEvent"];
export type GpuSample = components["schemas"]["StreamGpuSample"];
export type JobDetail = components["schemas"]["JobDetail"];
export type Gpu = components["schemas"]["GpuPublic"];
type ServerMessage = components["schemas"]["StreamServerMessage"];

// The id of the newest event already reflected in each job's cached detail.
const appliedIds = new WeakMap<QueryClient, Map<string, number>>();
export const LIST_REFRESH_MS = 250;
const pendingListRefresh = new WeakSet<QueryClient>();

function refreshListsSoon(client: QueryClient): void {
  if (pendingListRefresh.has(client)) return;
  pendingListRefresh.add(client);
  setTimeout(() => {
    pendingListRefresh.delete(client);
    void client.invalidateQueries({ queryKey: jobKeys.lists() });
  }, LIST_REFRESH_MS);
}

function applied(client: QueryClient): Map<string, number> {
  let ids = appliedIds.get(client);
  if (!ids) appliedIds.set(client, (ids = new Map()));
  return ids;
}

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

/** Apply one stream message to the cache. Returns the event id it carried, if any. */
export function applyMessage(client: QueryClient, message: ServerMessage): number | undefined {
  if (message.type === "gpu.metrics") {
    const sample = message as GpuSample;
    client.setQueryData<Gpu[]>(gpuKeys.all, (gpus) =>
      gpus?.map((gpu) => (gpu.uuid === sample.device_uuid ? { ...gpu, latest: sample } : gpu)),
    );
    return undefined;
  }
  if (!("id" in message) || typeof message.id !== "number" || !("job_id" in message)) return undefined;
  const event = message as StreamEvent;
  const jobId = event.job_id;
  if (!jobId) return event.id;
  const ids = applied(client);
  if ((ids.get(jobId) ?? 0) >= event.id) return event.id; // a duplicate or an older event: nothing to do
  ids.set(jobId, event.id);
  client.setQueryData<JobDetail>(jobKeys.detail(jobId), (job) => (job ? patchJob(job, event) : job));
  refreshListsSoon(client);
  return event.id;
}

function patchJob(job: JobDetail, event: StreamEvent): JobDetail {
  const payload = event.payload as Record<string, unknown>;
  if (event.type === "job.state" && typeof payload.state === "string") {
    const state = payload.state as JobDetail["state"];
    return {
      ...job,
      state,
      updated_at: event.ts,
      finished_at: TERMINAL.has(state) ? event.ts : job.finished_at,
      queue_position: state === "queued" ? job.queue_position : null,
      error: typeof payload.error === "string" ? payload.error : job.error,
    };
  }
  if (event.type === "job.progress" && typeof payload.tiles_done === "number") {
    const total = typeof payload.tiles_total === "number" ? payload.tiles_total : job.tiles_total;
    const rate = typeof payload.tiles_per_s === "number" ? payload.tiles_per_s : job.tiles_per_s;
    const done = Math.max(job.tiles_done, payload.tiles_done);
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
  onmessage: ((message: { data: string }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
  close(): void;
}

export interface LiveEventsOptions {
  url: string; // ws://host/stream?api_key=…&gpus=true (no `after`: the channel adds it)
  client: QueryClient;
  connect?: (url: string) => SocketLike; // a real WebSocket by default
  reconnectDelayMs?: number;
}

/** Open the live channel; returns a function that closes it for good. */
export function openLiveEvents({ url, client, connect, reconnectDelayMs = 1000 }: LiveEventsOptions): () => void {
  const open = connect ?? ((u: string) => new WebSocket(u) as unknown as SocketLike);
  let lastEventId = 0;
  let closed = false;
  let socket: SocketLike | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const start = () => {
    const separator = url.includes("?") ? "&" : "?";
    socket = open(lastEventId ? `${url}${separator}after=${lastEventId}` : url);
    socket.onmessage = ({ data }) => {
      const id = applyMessage(client, JSON.parse(data) as ServerMessage);
      if (id !== undefined && id > lastEventId) lastEventId = id;
    };
    socket.onclose = () => {
      if (!closed) timer = setTimeout(start, reconnectDelayMs);
    };
  };
  start();
  return () => {
    closed = true;
    clearTimeout(timer);
    socket?.close();
  };
}

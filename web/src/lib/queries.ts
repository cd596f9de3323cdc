// One queryOptions factory per resource: pages and the live-events core share keys and fetchers.
import { infiniteQueryOptions, queryOptions } from "@tanstack/react-query";
import type { components } from "../api/schema";
import { TIMELINE_SECONDS, adminKeys, analyticsKeys, catalogKeys, coverageKeys, fleetKeys, gpuKeys, imageryKeys, jobKeys, usageKeys, type JobFilters } from "../live/queryKeys";
import { api } from "./api";

type S = components["schemas"];
export type JobPublic = S["JobPublic"] & { tiles_per_s?: number | null; eta_seconds?: number | null };
export type JobDetail = S["JobDetail"];
export type JobEvent = S["Event"];
export type Gpu = S["GpuPublic"];
export type GpuSample = S["GpuSample"];
export type DeviceTimeline = S["DeviceTimeline"];
export type DeviceBatch = S["DeviceBatch"];
export type TileCollection = S["TileFeatureCollection"];
export type JobTrace = S["JobTrace"];
export type TraceSpan = S["TraceSpan"];
export type AdminAccount = S["AccountAdmin"];
export type AdminKey = S["KeyPublic"];
export type IssuedKey = S["KeyIssued"];
export type Window = "day" | "week" | "month" | "all";
export type Metric = "gpu_seconds" | "tiles" | "jobs" | "energy";

/** An API problem (RFC 9457) as an Error, with its HTTP status. */
export class ApiError extends Error {
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

/** The data, or the API's problem detail as an ApiError (openapi-fetch returns problems as `error`). */
function unwrap<T>(result: { data?: T; error?: unknown; response: Response }, what: string): T {
  if (result.error !== undefined || result.data === undefined) {
    const detail = (result.error as { detail?: string } | undefined)?.detail;
    throw new ApiError(detail ?? `could not load ${what}`, result.response.status);
  }
  return result.data;
}

/** Retry network and server errors a few times; a 4xx answer will not change by asking again. */
export function shouldRetry(failures: number, error: unknown): boolean {
  return !(error instanceof ApiError && error.status < 500) && failures < 3;
}

export const JOB_PAGE = 200;

/** How long the spans of a job's processes may take to reach the trace store after the job's `end job`:
 * each process's exporter sends its spans in batches, every 5 s (OpenTelemetry's default), so a device
 * worker's last batches can arrive after the run worker's `end job`, which it sends as it exits. */
export const SPANS_SETTLE_MS = 15_000;

/** When to ask for a job's trace again: every 5 s while the job is live; once it has ended, until its
 * `end job` span is in and SPANS_SETTLE_MS have passed since that span ended (a minute at most while
 * there is no `end job`; 40 answers in all, should the clocks disagree). */
export function traceRefetchMs(trace: JobTrace | undefined, live: boolean, updates: number, updatedAt: number): number | false {
  if (live) return 5_000;
  const end = trace?.spans.find((s) => s.name === "end job");
  if (!trace || !end) return updates < 12 ? 5_000 : false;
  const endedAt = Date.parse(trace.started_at) + end.start_ms + end.duration_ms;
  return updatedAt < endedAt + SPANS_SETTLE_MS && updates < 40 ? 5_000 : false;
}

export const jobQueries = {
  list: (filters: JobFilters) =>
    infiniteQueryOptions({
      queryKey: jobKeys.list(filters),
      initialPageParam: undefined as string | undefined,
      getNextPageParam: (last: S["Page_JobPublic_"]) => last.next_cursor ?? undefined,
      queryFn: async ({ pageParam, signal }) =>
        unwrap(await api.GET("/jobs", {
          signal,
          params: { query: { limit: JOB_PAGE, cursor: pageParam, sort: filters.sort, q: filters.q || undefined, state: filters.state?.length ? (filters.state as never) : undefined } },
        }), "jobs") as { data: JobPublic[]; next_cursor: string | null },
      refetchInterval: 30_000, // live events keep it current; a slow poll covers a stream that is down
    }),
  summary: () =>
    queryOptions({
      queryKey: jobKeys.summary(),
      queryFn: async ({ signal }) => unwrap(await api.GET("/jobs/summary", { signal }), "the summary"),
      refetchInterval: 10_000,
    }),
  detail: (id: string) =>
    queryOptions({
      queryKey: jobKeys.detail(id),
      enabled: Boolean(id),
      queryFn: async ({ signal }) => unwrap(await api.GET("/jobs/{job_id}", { signal, params: { path: { job_id: id } } }), "the job"),
    }),
  events: (id: string) =>
    queryOptions({
      queryKey: jobKeys.events(id),
      enabled: Boolean(id),
      queryFn: async ({ signal }) => {
        const all: JobEvent[] = [];
        let after = 0;
        for (;;) {
          const page = unwrap(await api.GET("/events", { signal, params: { query: { job_id: id, after, limit: 500 } } }), "the job's events");
          all.push(...page.data);
          if (!page.next_cursor) return all;
          after = Number(page.next_cursor);
        }
      },
    }),
  trace: (id: string, live: boolean) =>
    queryOptions({
      queryKey: jobKeys.trace(id),
      enabled: Boolean(id),
      queryFn: async ({ signal }) => unwrap(await api.GET("/jobs/{job_id}/trace", { signal, params: { path: { job_id: id } } }), "the job's trace"),
      refetchInterval: (query) => traceRefetchMs(query.state.data, live, query.state.dataUpdateCount, query.state.dataUpdatedAt),
      retry: (failures, error) => (error instanceof ApiError && error.status === 404 ? failures < 6 : shouldRetry(failures, error)),
      retryDelay: 2_000,
    }),
  tiles: (id: string) =>
    queryOptions({
      queryKey: jobKeys.tiles(id),
      enabled: Boolean(id),
      queryFn: async ({ signal }) => unwrap(await api.GET("/jobs/{job_id}/tiles", { signal, params: { path: { job_id: id } } }), "the job's tiles") as TileCollection,
    }),
};

export const imageryQueries = {
  /** The TileJSON of a job's imagery (null: the demo scene, for maps of many jobs); it never changes. */
  tilejson: (jobId: string | null, enabled = true) =>
    queryOptions({
      queryKey: imageryKeys.tilejson(jobId),
      staleTime: Infinity,
      enabled,
      queryFn: async ({ signal }) => jobId
        ? unwrap(await api.GET("/jobs/{job_id}/imagery/tilejson.json", { signal, params: { path: { job_id: jobId } } }), "the job's imagery")
        : unwrap(await api.GET("/imagery/tilejson.json", { signal }), "the demo imagery"),
    }),
};

export const fleetQueries = {
  /** Queue depth, running jobs, tiles/s and pool saturation from Prometheus (kept 15 days: no restart loses them). */
  history: (seconds: number) =>
    queryOptions({
      queryKey: fleetKeys.history(seconds),
      refetchInterval: 15_000, // Prometheus scrapes every 5 s; the charts move at a glance's pace
      queryFn: async ({ signal }) =>
        unwrap(await api.GET("/fleet/history", { signal, params: { query: { seconds } } }), "the fleet's history"),
    }),
};

export const gpuQueries = {
  list: () =>
    queryOptions({
      queryKey: gpuKeys.all,
      refetchInterval: 15_000, // samples arrive live; the inventory rarely changes
      queryFn: async ({ signal }) => unwrap(await api.GET("/gpus", { signal }), "devices"),
    }),
  telemetry: (uuid: string) =>
    queryOptions({
      queryKey: gpuKeys.telemetry(uuid),
      staleTime: Infinity, // the stream appends every new sample
      queryFn: async ({ signal }) =>
        unwrap(await api.GET("/gpus/{uuid}/telemetry", { signal, params: { path: { uuid }, query: { seconds: 300 } } }), "telemetry"),
    }),
  timeline: () =>
    queryOptions({
      queryKey: gpuKeys.timeline(),
      // Batches of the caller's jobs arrive live (job.progress); a slow poll adds the others' and
      // covers a stream that is down.
      refetchInterval: 15_000,
      queryFn: async ({ signal }) =>
        unwrap(await api.GET("/gpus/timeline", { signal, params: { query: { seconds: TIMELINE_SECONDS } } }), "the device timeline"),
    }),
};

export const usageQueries = {
  leaderboard: (window: Window, metric: Metric) =>
    queryOptions({
      queryKey: usageKeys.leaderboard(window, metric),
      queryFn: async ({ signal }) => unwrap(await api.GET("/usage/leaderboard", { signal, params: { query: { window, metric, limit: 20 } } }), "the leaderboard"),
    }),
  account: (id: string) =>
    queryOptions({
      queryKey: usageKeys.account(id),
      enabled: Boolean(id),
      queryFn: async ({ signal }) => {
        const windows: Window[] = ["day", "week", "month", "all"];
        return Promise.all(windows.map(async (window) =>
          unwrap(await api.GET("/usage/accounts/{account_id}", { signal, params: { path: { account_id: id }, query: { window } } }), "usage")));
      },
    }),
};

export const analyticsQueries = {
  throughput: (since: string) =>
    queryOptions({
      queryKey: analyticsKeys.panel("throughput-by-device", since),
      queryFn: async ({ signal }) => unwrap(await api.GET("/analytics/throughput-by-device", { signal, params: { query: { since } } }), "throughput"),
    }),
  gpuSecondsPerKm2: (since: string) =>
    queryOptions({
      queryKey: analyticsKeys.panel("gpu-seconds-per-km2", since),
      queryFn: async ({ signal }) => unwrap(await api.GET("/analytics/gpu-seconds-per-km2", { signal, params: { query: { since } } }), "GPU-seconds per km²"),
    }),
  dailyVolume: (since: string) =>
    queryOptions({
      queryKey: analyticsKeys.panel("daily-volume", since),
      queryFn: async ({ signal }) => unwrap(await api.GET("/analytics/daily-volume", { signal, params: { query: { since } } }), "daily volume"),
    }),
};

export const catalogQueries = {
  get: () =>
    queryOptions({
      queryKey: catalogKeys.all,
      queryFn: async ({ signal }) => unwrap(await api.GET("/catalog", { signal }), "the catalog"),
      staleTime: Infinity, // what the server offers changes with a deploy, not while a page is open
    }),
};

export const coverageQueries = {
  bbox: (bbox: string) =>
    queryOptions({
      queryKey: coverageKeys.bbox(bbox),
      queryFn: async ({ signal }) => unwrap(await api.GET("/coverage", { signal, params: { query: { bbox, limit: 20000 } } }), "coverage") as TileCollection,
    }),
};

/** Accounts and keys, for admins (a member's key gets 403: shown as such). */
export const adminQueries = {
  accounts: () =>
    queryOptions({
      queryKey: adminKeys.accounts(),
      queryFn: async ({ signal }) => unwrap(await api.GET("/admin/accounts", { signal }), "accounts"),
    }),
  keys: (accountId: string) =>
    queryOptions({
      queryKey: adminKeys.keys(accountId),
      queryFn: async ({ signal }) =>
        unwrap(await api.GET("/admin/accounts/{account_id}/keys", { signal, params: { path: { account_id: accountId } } }), "keys"),
      enabled: Boolean(accountId),
    }),
};

/** The admin actions, each a call that answers the changed record (or a problem, thrown as ApiError). */
export const adminActions = {
  createAccount: async (name: string, role: "admin" | "member") =>
    unwrap(await api.POST("/admin/accounts", { body: { name, role } }), "the account"),
  setDisabled: async (accountId: string, disabled: boolean) =>
    unwrap(await api.PATCH("/admin/accounts/{account_id}", { params: { path: { account_id: accountId } }, body: { disabled } }), "the account"),
  issueKey: async (accountId: string, name: string | null) =>
    unwrap(await api.POST("/admin/accounts/{account_id}/keys", { params: { path: { account_id: accountId } }, body: { name } }), "the key"),
  revokeKey: async (keyId: string) =>
    unwrap(await api.POST("/admin/keys/{key_id}/revoke", { params: { path: { key_id: keyId } } }), "the key"),
};

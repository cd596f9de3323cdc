// Query key factories: one place that names every cached resource.
export interface JobFilters {
  state?: string[];
  q?: string;
  sort?: "-created_at" | "created_at" | "-priority" | "name";
}

export const jobKeys = {
  all: ["jobs"] as const,
  lists: () => [...jobKeys.all, "list"] as const,
  list: (filters: JobFilters) => [...jobKeys.lists(), filters] as const,
  summary: () => [...jobKeys.all, "summary"] as const,
  details: () => [...jobKeys.all, "detail"] as const,
  detail: (id: string) => [...jobKeys.details(), id] as const,
  events: (id: string) => [...jobKeys.all, "events", id] as const,
  tiles: (id: string) => [...jobKeys.all, "tiles", id] as const,
  trace: (id: string) => [...jobKeys.all, "trace", id] as const,
};
/** How far back the device timeline reaches (seconds). */
export const TIMELINE_SECONDS = 300;
export const gpuKeys = {
  all: ["gpus"] as const,
  telemetry: (uuid: string) => ["gpus", "telemetry", uuid] as const,
  timeline: () => ["gpus", "timeline"] as const,
};
export const imageryKeys = {
  tilejson: (jobId: string | null) => ["imagery", jobId ?? "demo"] as const,
};
export const fleetKeys = {
  history: (seconds: number) => ["fleet", "history", seconds] as const,
};
export const usageKeys = {
  leaderboard: (window: string, metric: string) => ["usage", "leaderboard", window, metric] as const,
  account: (id: string) => ["usage", "account", id] as const,
};
export const analyticsKeys = {
  panel: (name: string, since: string) => ["analytics", name, since] as const,
};
export const catalogKeys = {
  all: ["catalog"] as const,
};
export const coverageKeys = {
  bbox: (bbox: string) => ["coverage", bbox] as const,
};
export const adminKeys = {
  all: ["admin"] as const,
  accounts: () => ["admin", "accounts"] as const,
  keys: (accountId: string) => ["admin", "keys", accountId] as const,
};

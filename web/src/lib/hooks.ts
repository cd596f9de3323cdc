"use client";
// One hook per resource, over the queryOptions factories in ./queries (pages use these; the live
// channel writes to the same keys).
import { useInfiniteQuery, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import type { JobFilters } from "../live/queryKeys";
import { adminKeys, jobKeys } from "../live/queryKeys";
import { api } from "./api";
import {
  adminActions, adminQueries, analyticsQueries, catalogQueries, coverageQueries, fleetQueries, gpuQueries, imageryQueries, jobQueries, usageQueries, type Metric, type Window,
} from "./queries";

export const useJobs = (filters: JobFilters) => useInfiniteQuery(jobQueries.list(filters));
export const useJobSummary = () => useQuery(jobQueries.summary());
export const useJob = (id: string) => useQuery(jobQueries.detail(id));
export const useJobEvents = (id: string) => useQuery(jobQueries.events(id));
/** The job's tiles; refetched every 5 s while `live` (results land in batches). */
export const useJobTrace = (id: string, live: boolean) => useQuery(jobQueries.trace(id, live));
export const useJobTiles = (id: string, live: boolean) =>
  useQuery({ ...jobQueries.tiles(id), refetchInterval: live ? 5000 : false });
export const useImagery = (jobId: string | null, enabled = true) => useQuery(imageryQueries.tilejson(jobId, enabled));
export const useFleetHistory = (seconds: number) => useQuery(fleetQueries.history(seconds));
export const useGpus = () => useQuery(gpuQueries.list());
export const useGpuTelemetry = (uuid: string) => useQuery(gpuQueries.telemetry(uuid));
export const useDeviceTimeline = () => useQuery(gpuQueries.timeline());
export const useLeaderboard = (window: Window, metric: Metric) => useQuery(usageQueries.leaderboard(window, metric));
export const useAccountUsage = (id: string) => useQuery(usageQueries.account(id));
export const useCatalog = () => useQuery(catalogQueries.get());
export const useCoverage = (bbox: string) => useQuery(coverageQueries.bbox(bbox));
export const useThroughputByDevice = (since: string) => useQuery(analyticsQueries.throughput(since));
export const useGpuSecondsPerKm2 = (since: string) => useQuery(analyticsQueries.gpuSecondsPerKm2(since));
export const useDailyVolume = (since: string) => useQuery(analyticsQueries.dailyVolume(since));

/** Cancel jobs; resolves to how many could not be canceled (already finished, or gone). */
export function useCancelJobs() {
  const client = useQueryClient();
  return useMutation({
    mutationFn: async (ids: string[]) => {
      const results = await Promise.all(ids.map((job_id) => api.POST("/jobs/{job_id}/cancel", { params: { path: { job_id } } })));
      return results.filter((r) => r.error).length;
    },
    onSettled: () => client.invalidateQueries({ queryKey: jobKeys.all }),
  });
}

export const useAdminAccounts = () => useQuery(adminQueries.accounts());
export const useAdminKeys = (accountId: string) => useQuery(adminQueries.keys(accountId));

/** An admin action; every admin view is refetched after it (counts of keys change with revocations).
 * Fetches still in flight are canceled first: invalidating a query whose first fetch is under way joins
 * that fetch (TanStack cancels only fetches of queries that have data), so a key list asked for just
 * before the first key was issued stayed "No keys yet." (seen in CI). */
export function useAdminAction<A extends unknown[], R>(action: (...args: A) => Promise<R>) {
  const client = useQueryClient();
  return useMutation({
    mutationFn: (args: A) => action(...args),
    onSettled: async () => {
      await client.cancelQueries({ queryKey: adminKeys.all });
      await client.invalidateQueries({ queryKey: adminKeys.all });
    },
  });
}

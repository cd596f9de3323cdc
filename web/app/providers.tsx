"use client";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { useEffect, useState, type ReactNode } from "react";
import { apiKey, streamUrl } from "../src/lib/api";
import { openLiveEvents } from "../src/live/liveEvents";
import { shouldRetry } from "../src/lib/queries";

export function Providers({ children }: { children: ReactNode }) {
  const [client] = useState(() => new QueryClient({ defaultOptions: { queries: { staleTime: 30_000, retry: shouldRetry } } }));
  // One live channel for the whole app: stream messages update the query cache.
  useEffect(() => {
    if (!apiKey()) return;
    return openLiveEvents({ url: streamUrl(), client });
  }, [client]);
  return <QueryClientProvider client={client}>{children}</QueryClientProvider>;
}

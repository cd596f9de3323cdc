"use client";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { createContext, useContext, useEffect, useState, type ReactNode } from "react";
import { apiKey, streamProtocols, streamUrl } from "../src/lib/api";
import { shouldRetry } from "../src/lib/queries";
import { openLiveEvents } from "../src/live/liveEvents";

export type LiveStatus = "signed-out" | "connecting" | "open" | "reconnecting" | "revoked";
const LiveStatusContext = createContext<LiveStatus>("connecting");
/** Whether the live channel is up (shown in the navigation bar). */
export const useLiveStatus = () => useContext(LiveStatusContext);

export function Providers({ children }: { children: ReactNode }) {
  const [client] = useState(() => new QueryClient({ defaultOptions: { queries: { staleTime: 30_000, retry: shouldRetry } } }));
  const [status, setStatus] = useState<LiveStatus>("connecting");
  // One live channel for the whole app: stream messages update the query cache.
  useEffect(() => {
    if (!apiKey()) {
      setStatus("signed-out");
      return;
    }
    return openLiveEvents({ url: streamUrl(), protocols: streamProtocols(), client, onStatus: setStatus });
  }, [client]);
  return (
    <QueryClientProvider client={client}>
      <LiveStatusContext.Provider value={status}>{children}</LiveStatusContext.Provider>
    </QueryClientProvider>
  );
}

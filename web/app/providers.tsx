"use client";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { createContext, useContext, useEffect, useState, useSyncExternalStore, type ReactNode } from "react";
import { apiKey, streamProtocols, streamUrl } from "../src/lib/api";
import { shouldRetry } from "../src/lib/queries";
import { openLiveEvents } from "../src/live/liveEvents";

export type LiveStatus = "signed-out" | "connecting" | "open" | "reconnecting" | "revoked";
const LiveStatusContext = createContext<LiveStatus>("connecting");
/** Whether the live channel is up (shown in the navigation bar). */
export const useLiveStatus = () => useContext(LiveStatusContext);

const noChange = () => () => {};

export function Providers({ children }: { children: ReactNode }) {
  // The dashboard renders in the browser only: every page depends on the key, the query cache and the
  // stream, and Emotion's server-rendered style tags moved under React's feet while it hydrated
  // (React error #418 on random pages). The static export is an empty shell the browser fills.
  const hydrated = useSyncExternalStore(noChange, () => true, () => false);
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
  if (!hydrated) return null;
  return (
    <QueryClientProvider client={client}>
      <LiveStatusContext.Provider value={status}>{children}</LiveStatusContext.Provider>
    </QueryClientProvider>
  );
}

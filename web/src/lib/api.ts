// The typed API client (openapi-fetch over the generated contract types), same origin as the API.
import createClient from "openapi-fetch";
import type { paths } from "../api/schema";
import { startTracing, tracingMiddleware } from "./tracing";

const KEY = "constellation.apiKey";

export function apiKey(): string | null {
  return typeof window === "undefined" ? null : window.localStorage.getItem(KEY);
}

export function setApiKey(key: string | null): void {
  if (key) window.localStorage.setItem(KEY, key);
  else window.localStorage.removeItem(KEY);
}

export const api = createClient<paths>({ baseUrl: "" });
startTracing(apiKey); // a no-op while the static export renders
api.use(tracingMiddleware);
api.use({
  onRequest({ request }) {
    const key = apiKey();
    if (key) request.headers.set("Authorization", `Bearer ${key}`);
    return request;
  },
});

export interface Problem {
  title: string;
  status: number;
  detail: string;
  errors?: { loc?: string[]; msg?: string }[];
}

/** The problem's message for one field (`body.area`, `body.zoom`, …), if the API named it. */
export function fieldError(problem: Problem | undefined, field: string): string | undefined {
  return problem?.errors?.find((e) => e.loc?.slice(1).join(".") === field || e.loc?.[1] === field)?.msg;
}

export function streamUrl(): string {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${window.location.host}/stream?gpus=true`;
}

/** The stream's subprotocols: the application's, and the key (a browser cannot set headers on a
 * WebSocket, and a key in the URL would end up in logs). The server selects only the first. */
export function streamProtocols(): string[] {
  return ["constellation.v1", `bearer.${apiKey() ?? ""}`];
}

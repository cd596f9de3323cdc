// The dashboard. Built (`make web`): a static export the API serves under /app, on its origin, so the
// API, its stream and the key work as they are. In development (`make dev`: `next dev`): the same
// pages with live reload, and every other path — the API, the stream's WebSocket, the docs — proxied
// to the API, so the browser still sees one origin.
import { PHASE_DEVELOPMENT_SERVER } from "next/constants.js";

const API = process.env.CONSTELLATION_API_URL ?? "http://127.0.0.1:8000";

/** @type {(phase: string) => import('next').NextConfig} */
export default function config(phase) {
  const shared = { basePath: "/app", trailingSlash: true, images: { unoptimized: true } };
  if (phase !== PHASE_DEVELOPMENT_SERVER) return { ...shared, output: "export" };
  return {
    ...shared,
    // Paths outside /app go to the API as they are (no trailing slash added: the API's routes have none).
    skipTrailingSlashRedirect: true,
    async rewrites() {
      return { fallback: [{ source: "/:path*", destination: `${API}/:path*`, basePath: false }] };
    },
  };
}

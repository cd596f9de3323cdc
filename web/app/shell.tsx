"use client";
// The frame around every page: theme (light/dark, follows the system until chosen), navigation, sign-in state.
import { Global, ThemeProvider } from "@emotion/react";
import styled from "@emotion/styled";
import { useEffect, useState, type ReactNode } from "react";
import { apiKey } from "../src/lib/api";
import { palettes, type Mode } from "../src/ui/theme";
import { useLiveStatus } from "./providers";

const LIVE_TEXT = {
  "signed-out": "", connecting: "Connecting…", open: "Live", reconnecting: "Reconnecting…",
  revoked: "Key revoked: sign in again",
} as const;

const MODE_KEY = "constellation.theme";

const links = [
  ["/app/", "Overview"],
  ["/app/jobs/", "Jobs"],
  ["/app/submit/", "Submit"],
  ["/app/gpus/", "GPUs"],
  ["/app/coverage/", "Coverage"],
  ["/app/usage/", "Usage"],
  ["/app/analytics/", "Analytics"],
  ["/app/admin/", "Admin"],
] as const;

const Nav = styled.nav`
  display: flex;
  flex-wrap: wrap;
  align-items: center;
  gap: 0.25rem 1rem;
  padding: 0.6rem 1rem;
  background: ${({ theme }) => theme.surface};
  border-bottom: 1px solid ${({ theme }) => theme.border};
  a {
    color: ${({ theme }) => theme.text};
    text-decoration: none;
    padding: 0.2rem 0.1rem;
    border-bottom: 2px solid transparent;
  }
  a[aria-current="page"] {
    border-bottom-color: ${({ theme }) => theme.accent};
    font-weight: 600;
  }
  .spacer {
    flex: 1;
  }
`;

export function Shell({ children }: { children: ReactNode }) {
  const [mode, setMode] = useState<Mode>("light");
  const [path, setPath] = useState("");
  const [signedIn, setSignedIn] = useState(true);
  useEffect(() => {
    const saved = window.localStorage.getItem(MODE_KEY) as Mode | null;
    setMode(saved ?? (window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
    setPath(window.location.pathname);
    setSignedIn(Boolean(apiKey()));
  }, []);
  const theme = palettes[mode];
  const live = useLiveStatus();
  const toggle = () => {
    const next = mode === "dark" ? "light" : "dark";
    window.localStorage.setItem(MODE_KEY, next);
    setMode(next);
  };
  return (
    <ThemeProvider theme={theme}>
      <Global
        styles={{
          body: { margin: 0, background: theme.bg, color: theme.text, fontFamily: "system-ui, sans-serif", colorScheme: theme.mode },
          a: { color: theme.accent },
          "table th, table td": { borderColor: theme.border },
          ":focus-visible": { outline: `3px solid ${theme.accent}`, outlineOffset: "2px" },
          ".sr-only": { position: "absolute", width: 1, height: 1, overflow: "hidden", clip: "rect(0 0 0 0)", whiteSpace: "nowrap" },
          "input, select, button": { font: "inherit" },
        }}
      />
      <a href="#main" className="skip" style={{ position: "absolute", left: "-999px" }} onFocus={(e) => (e.currentTarget.style.left = "0")}>
        Skip to content
      </a>
      <Nav aria-label="Main">
        <strong>Constellation</strong>
        {links.map(([href, label]) => (
          <a key={href} href={href} aria-current={path === href ? "page" : undefined}>{label}</a>
        ))}
        <span className="spacer" />
        {live !== "signed-out" && (
          <span role="status" aria-label={`Live updates: ${LIVE_TEXT[live]}`} data-live={live}
            style={{ fontSize: "0.85rem", color: live === "open" ? theme.states.succeeded : theme.muted }}>
            <span aria-hidden>●</span> {LIVE_TEXT[live]}
          </span>
        )}
        <button type="button" onClick={toggle} aria-label={`Switch to ${mode === "dark" ? "light" : "dark"} theme`}
          style={{ font: "inherit", background: "none", border: `1px solid ${theme.border}`, color: theme.text, borderRadius: 6, padding: "0.2rem 0.6rem", cursor: "pointer" }}>
          {mode === "dark" ? "Light" : "Dark"} theme
        </button>
        <a href="/app/signin/" aria-current={path === "/app/signin/" ? "page" : undefined}>{signedIn ? "API key" : "Sign in"}</a>
      </Nav>
      <main id="main" style={{ padding: "1rem", maxWidth: 1400, margin: "0 auto" }}>{children}</main>
    </ThemeProvider>
  );
}

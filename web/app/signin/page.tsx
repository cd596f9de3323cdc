"use client";
import { useState } from "react";
import { apiKey, setApiKey } from "../../src/lib/api";

export default function SignIn() {
  const [key, setKey] = useState(() => apiKey() ?? new URLSearchParams(globalThis.location?.search).get("key") ?? "");
  const [saved, setSaved] = useState(false);
  return (
    <form onSubmit={(e) => { e.preventDefault(); setApiKey(key.trim()); setSaved(true); window.location.href = "/app/jobs/"; }}>
      <label htmlFor="key">API key</label>{" "}
      <input id="key" value={key} onChange={(e) => setKey(e.target.value)} size={60} autoComplete="off" />{" "}
      <button type="submit">Sign in</button>
      {saved && <p role="status">Saved in this browser.</p>}
    </form>
  );
}

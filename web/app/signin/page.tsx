"use client";
// Sign in with an API key, kept in this browser's localStorage. `make demo` prints a link that fills
// in the demo's dev key in the URL's fragment (`#key=`: a fragment is never sent to a server, so it is
// in no server's log); the page takes it and removes it from the address and the history at once.
import { useEffect, useState } from "react";
import { api, apiKey, setApiKey } from "../../src/lib/api";
import { Button, Card, ErrorText, Field, Muted, Page, Title } from "../../src/ui/components";

export default function SignIn() {
  const [key, setKey] = useState("");
  const [current, setCurrent] = useState<string | null>(null);
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    setCurrent(apiKey());
    const handed = new URLSearchParams(window.location.hash.slice(1)).get("key");
    if (handed) window.history.replaceState(null, "", window.location.pathname);
    // What someone typed before the page came alive stays: only a handed-over key replaces it.
    setKey((typed) => handed ?? (typed || apiKey() || ""));
  }, []);

  async function signIn() {
    setBusy(true);
    setError(undefined);
    setApiKey(key.trim());
    // Check the key before leaving this page: a wrong key is said here, not on every page after.
    const { error: problem, response } = await api.GET("/jobs/summary");
    setBusy(false);
    if (problem) {
      setApiKey(current);
      setError(response.status === 401 ? "This key is not valid (unknown or revoked)." : (problem as { detail?: string }).detail ?? "Could not check the key.");
      return;
    }
    window.location.href = "/app/jobs/";
  }

  return (
    <Page style={{ maxWidth: "36rem" }}>
      <Title>Sign in</Title>
      <Card as="form" aria-label="Sign in" onSubmit={(e) => { e.preventDefault(); void signIn(); }}>
        <Field>
          <label htmlFor="key">API key</label>
          <input id="key" value={key} onChange={(e) => setKey(e.target.value)} autoComplete="off" required
            aria-describedby={error ? "key-error" : "key-help"} />
          <Muted id="key-help">Kept in this browser only. An admin issues keys (<code>constellation-dev</code> prints the demo&apos;s).</Muted>
          {error && <ErrorText role="alert" id="key-error">{error}</ErrorText>}
        </Field>
        <p style={{ display: "flex", gap: "0.5rem", margin: 0 }}>
          <Button type="submit" variant="primary" disabled={busy || !key.trim()}>Sign in</Button>
          {current && <Button type="button" onClick={() => { setApiKey(null); setCurrent(null); setKey(""); }}>Sign out</Button>}
        </p>
      </Card>
    </Page>
  );
}

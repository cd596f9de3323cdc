"use client";
// Admin: accounts and their API keys. Create and disable accounts, issue keys (shown once), revoke them;
// a revoked key and a disabled account stop at once, their open streams included. Admin keys only.
import { useState } from "react";
import { useAdminAccounts, useAdminAction, useAdminKeys } from "../../src/lib/hooks";
import { ApiError, adminActions, type AdminAccount, type IssuedKey } from "../../src/lib/queries";
import { Button, Card, Empty, ErrorState, ErrorText, Loading, Muted, Page, Title } from "../../src/ui/components";

const when = (value: string | null | undefined) => (value ? new Date(value).toLocaleString() : "—");

function ShownOnce({ issued }: { issued: IssuedKey }) {
  return (
    <div role="alert" aria-label="New API key" style={{ padding: "0.6rem", border: "2px solid currentColor", borderRadius: 6, margin: "0.6rem 0" }}>
      <strong>New key for this account — shown this once, store it now:</strong>
      <pre style={{ whiteSpace: "pre-wrap", wordBreak: "break-all", margin: "0.4rem 0" }} data-testid="issued-key">{issued.key}</pre>
      <Button type="button" onClick={() => void navigator.clipboard?.writeText(issued.key)}>Copy</Button>
    </div>
  );
}

function Keys({ account }: { account: AdminAccount }) {
  const keys = useAdminKeys(account.id);
  const issue = useAdminAction(adminActions.issueKey);
  const revoke = useAdminAction(adminActions.revokeKey);
  const [label, setLabel] = useState("");
  return (
    <Card aria-label={`Keys of ${account.name}`}>
      <h2>Keys of {account.name}</h2>
      <form aria-label="Issue a key" onSubmit={(e) => { e.preventDefault(); issue.mutate([account.id, label || null]); setLabel(""); }}
        style={{ display: "flex", gap: "0.6rem", alignItems: "end", flexWrap: "wrap" }}>
        <label>Label <input value={label} maxLength={64} onChange={(e) => setLabel(e.target.value)} placeholder="e.g. ci, laptop" /></label>
        <Button type="submit" variant="primary" disabled={issue.isPending}>Issue key</Button>
      </form>
      {issue.isError && <ErrorText role="alert">{issue.error.message}</ErrorText>}
      {issue.data && <ShownOnce issued={issue.data} />}
      {revoke.isError && <ErrorText role="alert">{revoke.error.message}</ErrorText>}
      {keys.isPending ? <Loading what="keys" /> : keys.isError ? <ErrorState error={keys.error} /> : keys.data.length === 0 ? (
        <Empty>No keys yet.</Empty>
      ) : (
        <table aria-label={`Keys of ${account.name}`} style={{ borderCollapse: "collapse", width: "100%" }}>
          <thead><tr><th scope="col" align="left">Key</th><th scope="col" align="left">Label</th><th scope="col" align="left">Created</th><th scope="col" align="left">Last used</th><th scope="col" align="left">Status</th><th scope="col" /></tr></thead>
          <tbody>
            {keys.data.map((k) => (
              <tr key={k.id}>
                <td><code>{k.prefix}…</code></td>
                <td>{k.name ?? ""}</td>
                <td>{when(k.created_at)}</td>
                <td>{when(k.last_used_at)}</td>
                <td>{k.revoked_at ? `Revoked ${when(k.revoked_at)}` : "Active"}</td>
                <td>{!k.revoked_at && (
                  <Button type="button" variant="danger" disabled={revoke.isPending} aria-label={`Revoke key ${k.prefix}`}
                    onClick={() => { if (window.confirm(`Revoke key ${k.prefix}…? It stops working at once.`)) revoke.mutate([k.id]); }}>
                    Revoke
                  </Button>
                )}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Card>
  );
}

export default function Admin() {
  const accounts = useAdminAccounts();
  const create = useAdminAction(adminActions.createAccount);
  const issueFirst = useAdminAction(adminActions.issueKey);
  const toggle = useAdminAction(adminActions.setDisabled);
  const [name, setName] = useState("");
  const [role, setRole] = useState<"member" | "admin">("member");
  const [selected, setSelected] = useState<string>("");
  if (accounts.isError && accounts.error instanceof ApiError && accounts.error.status === 403) {
    return <Page><Title>Admin</Title><Card><Muted>Managing accounts and keys needs an admin key.</Muted></Card></Page>;
  }
  const chosen = accounts.data?.find((a) => a.id === selected);
  return (
    <Page>
      <Title>Admin</Title>
      <Card aria-label="Create an account">
        <h2>New account</h2>
        <form aria-label="Create an account" style={{ display: "flex", gap: "0.6rem", alignItems: "end", flexWrap: "wrap" }}
          onSubmit={(e) => {
            e.preventDefault();
            create.mutate([name, role], {
              onSuccess: (account) => { setSelected(account.id); setName(""); issueFirst.mutate([account.id, "first"]); },
            });
          }}>
          <label>Name <input required value={name} maxLength={64} pattern="[A-Za-z0-9][A-Za-z0-9._\-]*" onChange={(e) => setName(e.target.value)} /></label>
          <label>Role <select value={role} onChange={(e) => setRole(e.target.value as "member" | "admin")}><option>member</option><option>admin</option></select></label>
          <Button type="submit" variant="primary" disabled={create.isPending}>Create with a key</Button>
        </form>
        {create.isError && <ErrorText role="alert">{create.error.message}</ErrorText>}
        {issueFirst.data && <ShownOnce issued={issueFirst.data} />}
      </Card>
      <Card aria-label="Accounts">
        <h2>Accounts</h2>
        {toggle.isError && <ErrorText role="alert">{toggle.error.message}</ErrorText>}
        {accounts.isPending ? <Loading what="accounts" /> : accounts.isError ? <ErrorState error={accounts.error} /> : (
          <table aria-label="Accounts" style={{ borderCollapse: "collapse", width: "100%" }}>
            <thead><tr><th scope="col" align="left">Name</th><th scope="col" align="left">Role</th><th scope="col" align="right">Active keys</th><th scope="col" align="left">Created</th><th scope="col" align="left">Status</th><th scope="col" /></tr></thead>
            <tbody>
              {accounts.data.map((a) => (
                <tr key={a.id} aria-selected={a.id === selected}>
                  <td><Button variant="plain" type="button" onClick={() => setSelected(a.id)} aria-label={`Show ${a.name}'s keys`}>{a.name}</Button></td>
                  <td>{a.role}</td>
                  <td align="right">{a.active_keys}</td>
                  <td>{when(a.created_at)}</td>
                  <td>{a.disabled_at ? `Disabled ${when(a.disabled_at)}` : "Active"}</td>
                  <td>
                    <Button type="button" variant={a.disabled_at ? "plain" : "danger"} disabled={toggle.isPending}
                      aria-label={`${a.disabled_at ? "Enable" : "Disable"} ${a.name}`}
                      onClick={() => toggle.mutate([a.id, !a.disabled_at])}>
                      {a.disabled_at ? "Enable" : "Disable"}
                    </Button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Card>
      {chosen && <Keys account={chosen} />}
    </Page>
  );
}

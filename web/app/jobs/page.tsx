"use client";
// Jobs: a virtualized TanStack Table over server-side pages (filter, sort and search are the API's),
// live state, progress and ETA from the stream, and bulk cancel of the selected jobs.
import { createColumnHelper, flexRender, getCoreRowModel, useReactTable, type RowSelectionState } from "@tanstack/react-table";
import { useVirtualizer } from "@tanstack/react-virtual";
import { useTheme } from "@emotion/react";
import { useEffect, useMemo, useRef, useState } from "react";
import { useCancelJobs, useJobSummary, useJobs } from "../../src/lib/hooks";
import type { JobPublic } from "../../src/lib/queries";
import type { JobFilters } from "../../src/live/queryKeys";
import { JOB_STATES } from "../../src/lib/vocabulary";
import { Button, Card, Empty, ErrorState, Loading, Muted, Page, Progress, StateBadge, Title, formatSeconds } from "../../src/ui/components";

const SORTS: [NonNullable<JobFilters["sort"]>, string][] = [
  ["-created_at", "Newest first"], ["created_at", "Oldest first"], ["-priority", "Highest priority"], ["name", "Name A–Z"],
];
const ROW_HEIGHT = 40;
const column = createColumnHelper<JobPublic>();

function useDebounced<T>(value: T, ms: number): T {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => { const t = setTimeout(() => setDebounced(value), ms); return () => clearTimeout(t); }, [value, ms]);
  return debounced;
}

export default function Jobs() {
  const theme = useTheme();
  const [states, setStates] = useState<string[]>([]);
  const [sort, setSort] = useState<NonNullable<JobFilters["sort"]>>("-created_at");
  const [search, setSearch] = useState("");
  const q = useDebounced(search.trim(), 300);
  const filters: JobFilters = useMemo(() => ({ state: states, sort, q }), [states, sort, q]);
  const jobs = useJobs(filters);
  const summary = useJobSummary();
  const cancelJobs = useCancelJobs();
  const [selection, setSelection] = useState<RowSelectionState>({});
  const [notice, setNotice] = useState<string>();

  const rows = useMemo(() => jobs.data?.pages.flatMap((p) => p.data) ?? [], [jobs.data]);
  const total = summary.data ? (states.length ? states : JOB_STATES).reduce((n, s) => n + (summary.data.counts[s] ?? 0), 0) : undefined;

  const columns = useMemo(() => [
    column.display({
      id: "select",
      header: ({ table }) => (
        <input type="checkbox" aria-label="Select all loaded jobs" checked={table.getIsAllRowsSelected()}
          onChange={table.getToggleAllRowsSelectedHandler()} />
      ),
      cell: ({ row }) => (
        <input type="checkbox" aria-label={`Select ${row.original.name}`} checked={row.getIsSelected()}
          disabled={!row.getCanSelect()} onChange={row.getToggleSelectedHandler()} />
      ),
      size: 36,
    }),
    column.accessor("name", { header: "Name", cell: (c) => <a href={`/app/jobs/detail/?id=${c.row.original.id}`}>{c.getValue()}</a>, size: 200 }),
    column.accessor("state", { header: "State", cell: (c) => <StateBadge state={c.getValue()} />, size: 100 }),
    column.accessor("progress", {
      header: "Progress",
      cell: (c) => <><Progress value={c.getValue()} label={`${c.row.original.name} progress`} /> {Math.round(c.getValue() * 100)}%</>,
      size: 170,
    }),
    column.accessor("tiles_done", { header: "Tiles", cell: (c) => `${c.getValue()}/${c.row.original.tiles_total ?? "?"}`, size: 100 }),
    column.display({
      id: "eta", header: "ETA", size: 80,
      cell: (c) => (c.row.original.state === "running" ? formatSeconds(c.row.original.eta_seconds) : "–"),
    }),
    column.accessor("priority", { header: "Priority", size: 70 }),
    column.accessor("mode", { header: "Mode", size: 70 }),
    column.accessor("submitted_by", { header: "By", size: 100 }),
    column.accessor("created_at", { header: "Created (UTC)", cell: (c) => c.getValue().slice(5, 19).replace("T", " "), size: 150 }),
    column.display({
      id: "actions", header: () => <span className="sr-only">Actions</span>, size: 90,
      cell: ({ row }) => (row.original.state === "queued" || row.original.state === "running") && (
        <Button variant="danger" onClick={() => void cancel([row.original])} aria-label={`Cancel ${row.original.name}`}>Cancel</Button>
      ),
    }),
  // eslint-disable-next-line react-hooks/exhaustive-deps
  ], []);

  const table = useReactTable({
    data: rows,
    columns,
    getRowId: (row) => row.id,
    state: { rowSelection: selection },
    onRowSelectionChange: setSelection,
    enableRowSelection: (row) => row.original.state === "queued" || row.original.state === "running",
    getCoreRowModel: getCoreRowModel(),
    manualSorting: true,
    manualFiltering: true,
    manualPagination: true,
  });

  async function cancel(targets: JobPublic[]) {
    const failed = await cancelJobs.mutateAsync(targets.map((job) => job.id));
    setNotice(failed ? `${targets.length - failed} canceled, ${failed} could not be (already finished?)` : `${targets.length} canceled`);
    setSelection({});
  }

  const scroller = useRef<HTMLDivElement>(null);
  const tableRows = table.getRowModel().rows;
  const virtual = useVirtualizer({ count: tableRows.length, getScrollElement: () => scroller.current, estimateSize: () => ROW_HEIGHT, overscan: 12 });
  const items = virtual.getVirtualItems();
  const lastIndex = items.length ? items[items.length - 1].index : 0;
  useEffect(() => {
    if (lastIndex >= tableRows.length - 20 && jobs.hasNextPage && !jobs.isFetchingNextPage) void jobs.fetchNextPage();
  }, [lastIndex, tableRows.length, jobs]);

  const selected = table.getSelectedRowModel().rows.map((r) => r.original);
  const padTop = items.length ? items[0].start : 0;
  const padBottom = items.length ? virtual.getTotalSize() - items[items.length - 1].end : 0;

  return (
    <Page>
      <Title>Jobs</Title>
      <Card as="form" role="search" aria-label="Filter jobs" onSubmit={(e) => e.preventDefault()}
        style={{ display: "flex", flexWrap: "wrap", gap: "0.75rem 1.25rem", alignItems: "center" }}>
        <fieldset style={{ border: "none", padding: 0, margin: 0, display: "flex", gap: "0.6rem", flexWrap: "wrap" }}>
          <legend className="sr-only">State</legend>
          {JOB_STATES.map((s) => (
            <label key={s}>
              <input type="checkbox" checked={states.includes(s)} onChange={(e) => setStates((cur) => (e.target.checked ? [...cur, s] : cur.filter((x) => x !== s)))} />{" "}
              {s}{summary.data ? <Muted> ({summary.data.counts[s] ?? 0})</Muted> : null}
            </label>
          ))}
        </fieldset>
        <label>Sort{" "}
          <select value={sort} onChange={(e) => setSort(e.target.value as typeof sort)}>
            {SORTS.map(([value, label]) => <option key={value} value={value}>{label}</option>)}
          </select>
        </label>
        <label>Search names{" "}<input type="search" value={search} onChange={(e) => setSearch(e.target.value)} placeholder="name contains…" /></label>
        <Button type="button" variant="danger" disabled={!selected.length} onClick={() => void cancel(selected)}>
          Cancel selected ({selected.length})
        </Button>
        {notice && <span role="status">{notice}</span>}
      </Card>
      {jobs.isPending ? <Loading what="jobs" /> : jobs.isError ? <ErrorState error={jobs.error} /> : rows.length === 0 ? (
        <Empty>{states.length || q ? "No job matches these filters." : <>No jobs yet: <a href="/app/submit/">submit one</a>.</>}</Empty>
      ) : (
        <Card style={{ padding: 0 }}>
          <p style={{ margin: "0.5rem 1rem" }} aria-live="polite">
            <Muted>{rows.length} loaded{total !== undefined ? ` of ${total}` : ""}{jobs.hasNextPage ? " — scroll for more" : ""}</Muted>
          </p>
          <div ref={scroller} style={{ height: "65vh", overflow: "auto" }} tabIndex={0} aria-label="Jobs table, scrollable">
            <table aria-label="Jobs" aria-rowcount={total ?? rows.length} style={{ borderCollapse: "collapse", width: "100%", tableLayout: "fixed" }}>
              <thead style={{ position: "sticky", top: 0, background: theme.surface, zIndex: 1 }}>
                {table.getHeaderGroups().map((group) => (
                  <tr key={group.id}>
                    {group.headers.map((h) => (
                      <th key={h.id} scope="col" style={{ width: h.getSize(), textAlign: "left", padding: "0.4rem 0.5rem", borderBottom: `1px solid ${theme.border}` }}>
                        {flexRender(h.column.columnDef.header, h.getContext())}
                      </th>
                    ))}
                  </tr>
                ))}
              </thead>
              <tbody>
                {padTop > 0 && <tr aria-hidden style={{ height: padTop }} />}
                {items.map((item) => {
                  const row = tableRows[item.index];
                  return (
                    <tr key={row.id} data-job-id={row.id} data-state={row.original.state} aria-rowindex={item.index + 2} style={{ height: ROW_HEIGHT }}>
                      {row.getVisibleCells().map((cell) => (
                        <td key={cell.id} style={{ padding: "0 0.5rem", borderBottom: `1px solid ${theme.border}`, whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" }}>
                          {flexRender(cell.column.columnDef.cell, cell.getContext())}
                        </td>
                      ))}
                    </tr>
                  );
                })}
                {padBottom > 0 && <tr aria-hidden style={{ height: padBottom }} />}
              </tbody>
            </table>
          </div>
        </Card>
      )}
    </Page>
  );
}

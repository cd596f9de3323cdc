"""`constellation`: the command-line client of the Constellation API.

    constellation submit area.geojson --zoom 15 --watch
    constellation ls --state running
    constellation status JOB_ID
    constellation watch JOB_ID        # live progress bar from the stream; resumes after a dropped connection
    constellation cancel JOB_ID
    constellation gpus                # the devices: serving or gone, host, busy, tiles/s, utilization
    constellation logs JOB_ID -f      # Server-Sent Events, resumes with Last-Event-ID
    constellation areas import area.geojson --name Geneva
    constellation admin create-account field-team     # admins: accounts and keys (see `admin --help`)
    constellation admin revoke KEY_ID

The API and key come from CONSTELLATION_API_URL and CONSTELLATION_API_KEY (or --api-url/--api-key);
next to a `make demo` checkout the dev key in .local/dev-api-key is used when no key is given.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from constellation_core.vocabulary import DEFAULT_BATCH_SIZE, DEFAULT_MODE, LOG_EVENT_TYPES, TERMINAL_JOB_STATES

app = typer.Typer(help="Submit and watch tile-inference jobs on Constellation.", no_args_is_help=True)
areas_app = typer.Typer(help="Stored areas of interest.", no_args_is_help=True)
app.add_typer(areas_app, name="areas")
out = Console()
err = Console(stderr=True)

_options: dict[str, str | None] = {"api_url": None, "api_key": None}


class ApiError(Exception):
    pass


@app.callback()
def main(
    api_url: Annotated[str | None, typer.Option(envvar="CONSTELLATION_API_URL", help="API base URL")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="CONSTELLATION_API_KEY", help="API key (cst_…)")] = None,
) -> None:
    _options["api_url"] = api_url
    _options["api_key"] = api_key


def _base_url() -> str:
    return (_options["api_url"] or "http://127.0.0.1:8000").rstrip("/")


def _key() -> str:
    if _options["api_key"]:
        return _options["api_key"]
    dev_key = Path(os.environ.get("CONSTELLATION_LOCAL_DIR", ".local")) / "dev-api-key"
    if dev_key.exists():
        return dev_key.read_text().strip()
    err.print("[red]No API key:[/] set CONSTELLATION_API_KEY or pass --api-key (make demo prints a dev key).")
    raise typer.Exit(2)


def _client() -> httpx.Client:
    return httpx.Client(base_url=_base_url(), headers={"Authorization": f"Bearer {_key()}"}, timeout=30)


def _call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        with _client() as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach the API at {_base_url()}: {exc}") from exc
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = problem.get("detail") or problem.get("title")
            fields = [f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in problem.get("errors") or []]
        except ValueError:
            detail, fields = response.text, []
        raise ApiError(f"{response.status_code} {detail}" + "".join(f"\n  {f}" for f in fields))
    return response.json()


def _run(fn):
    try:
        return fn()
    except ApiError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


# A job id may be given whole or by its start, as `ls` shows it in a narrow terminal ("36d00647…"):
# the start is looked up among the caller's most recent jobs.
JOB_ID_LOOKUP = 500  # the API's largest page
JobId = Annotated[str, typer.Argument(help="The job's id, whole or its start (as `ls` shows it in a narrow terminal)")]


def match_job_id(given: str, ids: list[str]) -> str:
    """The one id in `ids` that starts with `given` (dashes and case ignored); ApiError if none or several."""
    start = given.strip().lower().rstrip("…").replace("-", "")
    if not start or any(c not in "0123456789abcdef" for c in start):
        raise ApiError(f"{given!r} is not a job id (hex digits, with or without dashes)")
    found = [job_id for job_id in ids if job_id.replace("-", "").startswith(start)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ApiError(f"no job id starts with {given!r} among your {len(ids)} most recent jobs: give the whole id")
    raise ApiError(f"{given!r} starts {len(found)} job ids ({', '.join(found[:5])}{', …' if len(found) > 5 else ''}): "
                   "give more of it")


def _job_id(given: str) -> str:
    """`given` if it is a whole job id, else the recent job whose id starts with it."""
    if len(given.replace("-", "")) == 32:
        return given
    return match_job_id(given, [job["id"] for job in _call("GET", "/jobs", params={"limit": JOB_ID_LOOKUP})["data"]])


def _read_geojson(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/] cannot read GeoJSON from {path}: {exc}")
        raise typer.Exit(2) from None


@app.command()
def submit(
    geojson: Annotated[Path, typer.Argument(help="GeoJSON file: a Polygon/MultiPolygon, a Feature, or a collection")],
    zoom: Annotated[int, typer.Option(help="Web-mercator zoom of the tiles")] = 15,
    name: Annotated[str | None, typer.Option(help="Job name (default: the file name)")] = None,
    model: Annotated[str | None, typer.Option(help="Model (default: the API's)")] = None,
    mode: Annotated[str, typer.Option(help="parallel (all devices) or serial (one device)")] = DEFAULT_MODE,
    priority: Annotated[int, typer.Option(help="Higher runs first")] = 0,
    batch_size: Annotated[int, typer.Option(help="Tiles per batch")] = DEFAULT_BATCH_SIZE,
    idempotency_key: Annotated[str | None, typer.Option(help="Makes a retried submit return the same job")] = None,
    watch_: Annotated[bool, typer.Option("--watch", help="Then watch the job until it ends")] = False,
) -> None:
    """Submit a job over the area in a GeoJSON file (several features: their union, as the API reads it)."""
    body = {"name": name or geojson.stem, "zoom": zoom, "mode": mode, "priority": priority,
            "batch_size": batch_size, "area": _read_geojson(geojson), **({"model": model} if model else {})}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job = _run(lambda: _call("POST", "/jobs", json=body, headers=headers))
    out.print(f"submitted [bold]{job['id']}[/] · {job['tiles_total']} tiles at zoom {job['zoom']} · {job['state']}")
    if watch_:
        watch(job["id"])


@app.command("ls")
def list_jobs(
    state: Annotated[list[str] | None, typer.Option(help="Only these states (repeatable)")] = None,
    limit: Annotated[int, typer.Option(help="How many")] = 20,
) -> None:
    """Recent jobs, newest first."""
    page = _run(lambda: _call("GET", "/jobs", params={"limit": limit, **({"state": state} if state else {})}))
    table = Table("id", "name", "state", "progress", "tiles", "mode", "created")
    for job in page["data"]:
        table.add_row(job["id"], job["name"], job["state"], f"{job['progress']:.0%}", str(job["tiles_total"]),
                      job["mode"], job["created_at"][:19].replace("T", " "))
    out.print(table)


@app.command()
def gpus() -> None:
    """The devices jobs run on: serving or gone, their host, what runs on them now, and how fast they have
    been (tiles/s over their batches of the last two minutes: where serial jobs go)."""
    devices = _run(lambda: _call("GET", "/gpus"))
    table = Table("device", "state", "host", "now", "tiles/s (2 min)", "util", "memory")
    for gpu in devices:
        fields = (gpu["latest"] or {}).get("fields") or {}
        util, used = fields.get("DCGM_FI_DEV_GPU_UTIL"), fields.get("DCGM_FI_DEV_FB_USED")
        if gpu["state"] == "gone":
            now = "-"
        elif gpu["job_ids"]:
            now = ", ".join(f"job {job_id[:8]}" for job_id in gpu["job_ids"])
        else:
            now = "another account's job" if gpu["busy"] else "idle"
        simulated = gpu["simulated"] and "simulated" not in gpu["name"].lower()
        table.add_row(gpu["name"] + (" (simulated)" if simulated else ""),
                      gpu["state"], gpu["host"] or "-", now,
                      f"{gpu['tiles_per_s']:.0f}" if gpu["tiles_per_s"] is not None else "-",
                      f"{util:.0f} %" if util is not None else "-",
                      f"{used:.0f} MiB" if used is not None else "-")
    out.print(table)


@app.command()
def status(job_id: JobId) -> None:
    """A job's state, progress, runs and devices."""
    job = _run(lambda: _call("GET", f"/jobs/{_job_id(job_id)}"))
    out.print(f"[bold]{job['name']}[/] {job['id']}")
    out.print(f"  state     {job['state']}" + (f" (queue position {job['queue_position']})" if job["queue_position"] else ""))
    out.print(f"  progress  {job['tiles_done']}/{job['tiles_total']} tiles ({job['progress']:.0%})"
              + (f", {job['tiles_per_s']:.0f} tiles/s, ETA {job['eta_seconds']:.0f} s" if job.get("eta_seconds") else ""))
    for run in job["runs"]:
        out.print(f"  run       {run['dagster_run_id']} {run['state']} on {', '.join(run['devices']) or '-'}")
    if job["dagit_url"]:
        out.print(f"  dagit     {job['dagit_url']}")
    if job["error"]:
        out.print(f"  [red]error[/]     {job['error']}")


@app.command()
def watch(
    job_id: JobId,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds")] = 3600,
) -> None:
    """Follow a job live (WebSocket stream) with a progress bar until it ends; exit 1 unless it succeeded."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    job = _run(lambda: _call("GET", f"/jobs/{_job_id(job_id)}"))
    job_id = job["id"]
    state, done, total, last_id = job["state"], job["tiles_done"], job["tiles_total"] or 0, 0
    ws_url = _base_url().replace("http", "ws", 1) + f"/stream?job_id={job_id}"
    deadline = time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=out, transient=False) as progress:
        bar = progress.add_task(f"{job['name']} [{state}]", total=total or None, completed=done, rate="")
        while state not in TERMINAL_JOB_STATES and time.monotonic() < deadline:
            try:
                # From event 0 the first time, then from the last one seen: no gap after a drop.
                with connect(f"{ws_url}&after={last_id}", open_timeout=10,
                             additional_headers={"Authorization": f"Bearer {_key()}"}) as ws:
                    while state not in TERMINAL_JOB_STATES and time.monotonic() < deadline:
                        try:
                            message = json.loads(ws.recv(timeout=30))
                        except TimeoutError:
                            continue
                        if message.get("id"):
                            last_id = message["id"]
                        payload = message.get("payload", {})
                        if message.get("type") == "job.progress":
                            done, total = payload["tiles_done"], payload["tiles_total"]
                            rate = f"{payload['tiles_per_s']:.0f} tiles/s" if payload.get("tiles_per_s") else ""
                            progress.update(bar, total=total, completed=done, rate=rate)
                        elif message.get("type") == "job.state":
                            state = payload["state"]
                            progress.update(bar, description=f"{job['name']} [{state}]")
            except (ConnectionClosed, OSError) as exc:
                err.print(f"[yellow]stream dropped ({exc}); reconnecting after event {last_id}[/]")
                time.sleep(1)
    if state not in TERMINAL_JOB_STATES:
        err.print(f"[red]gave up after {timeout:.0f} s; the job is still {state}[/]")
        raise typer.Exit(1)
    out.print(f"job {job_id} {state}: {done}/{total} tiles")
    if state != "succeeded":
        raise typer.Exit(1)


@app.command()
def cancel(job_id: JobId) -> None:
    """Cancel a queued or running job."""
    job = _run(lambda: _call("POST", f"/jobs/{_job_id(job_id)}/cancel"))
    out.print(f"job {job['id']} {job['state']}")


@app.command()
def logs(
    job_id: JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends")] = False,
) -> None:
    """A job's log lines and state changes (`-f`: live, until the job ends)."""
    job_id = _run(lambda: _job_id(job_id))
    if not follow:
        after: int | str = 0
        while after is not None:
            page = _run(lambda: _call("GET", "/events", params={"job_id": job_id, "after": after, "limit": 500}))
            for event in page["data"]:
                if event["type"] in LOG_EVENT_TYPES:
                    payload = event["payload"]
                    _print_log({"ts": event["ts"], **({"state": payload["state"], "error": payload.get("error")}
                                                      if event["type"] == "job.state" else payload)})
            after = page["next_cursor"]
        return
    last_id = 0
    while True:
        try:
            with _client() as client, client.stream(
                "GET", f"/jobs/{job_id}/logs", headers={"Last-Event-ID": str(last_id)},
                timeout=httpx.Timeout(30, read=None),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    err.print(f"[red]error:[/] {response.status_code} {response.json().get('detail')}")
                    raise typer.Exit(1)
                event_id, data = None, None
                for line in response.iter_lines():
                    if line.startswith("id: "):
                        event_id = int(line[4:])
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                    elif line == "" and data is not None:
                        _print_log(data)
                        last_id, data = event_id or last_id, None
                return  # the server ends the stream after the job's final state
        except httpx.HTTPError as exc:
            err.print(f"[yellow]log stream dropped ({exc}); resuming after event {last_id}[/]")
            time.sleep(1)


def _print_log(data: dict[str, Any]) -> None:
    when = data["ts"][11:19]
    if data.get("state"):
        out.print(f"{when} [bold]state[/] {data['state']}" + (f": {data['error']}" if data.get("error") else ""))
    else:
        out.print(f"{when} {data.get('level', 'info'):<5} {data.get('message', '')}")


@areas_app.command("import")
def import_area(
    geojson: Annotated[Path, typer.Argument(help="GeoJSON file")],
    name: Annotated[str | None, typer.Option(help="Area name (default: the file name)")] = None,
) -> None:
    """Store an area of interest; jobs can then use its id."""
    area = _run(lambda: _call("POST", "/areas", json={"name": name or geojson.stem, "geojson": _read_geojson(geojson)}))
    out.print(f"area [bold]{area['id']}[/] {area['name']} · {area['area_km2']:.1f} km²")


admin_app = typer.Typer(help="Accounts and API keys (needs an admin key).", no_args_is_help=True)
app.add_typer(admin_app, name="admin")


def _when(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


def _account(name_or_id: str) -> dict[str, Any]:
    """The account with this name or id (the listing is small: operators' accounts, not jobs)."""
    accounts = _call("GET", "/admin/accounts")
    for account in accounts:
        if name_or_id in (account["name"], account["id"]):
            return account
    raise ApiError(f"no account named or with id {name_or_id!r}")


@admin_app.command("accounts")
def admin_accounts() -> None:
    """Every account: role, keys in use, disabled or not."""
    accounts = _run(lambda: _call("GET", "/admin/accounts"))
    table = Table("id", "name", "role", "keys", "created", "disabled")
    for a in accounts:
        table.add_row(a["id"], a["name"], a["role"], str(a["active_keys"]), _when(a["created_at"]),
                      _when(a["disabled_at"]))
    out.print(table)


@admin_app.command("create-account")
def admin_create_account(
    name: Annotated[str, typer.Argument(help="Unique name: letters, digits, '.', '_', '-'")],
    role: Annotated[str, typer.Option(help="member or admin")] = "member",
    key: Annotated[bool, typer.Option(help="Also issue its first key (printed once)")] = True,
) -> None:
    """Create an account (and, unless --no-key, its first API key)."""
    account = _run(lambda: _call("POST", "/admin/accounts", json={"name": name, "role": role}))
    out.print(f"account [bold]{account['name']}[/] ({account['role']}) {account['id']}")
    if key:
        _print_issued(_run(lambda: _call("POST", f"/admin/accounts/{account['id']}/keys", json={"name": "first"})))


def _print_issued(issued: dict[str, Any]) -> None:
    out.print(f"key {issued['id']} ({issued['prefix']}…): [bold]{issued['key']}[/]")
    err.print("[yellow]This is the only time the key is shown: store it now.[/]")


@admin_app.command("disable")
def admin_disable(account: Annotated[str, typer.Argument(help="Account name or id")]) -> None:
    """Disable an account: its keys stop working at once and its open streams close."""
    updated = _run(lambda: _call("PATCH", f"/admin/accounts/{_account(account)['id']}", json={"disabled": True}))
    out.print(f"account [bold]{updated['name']}[/] disabled at {_when(updated['disabled_at'])}")


@admin_app.command("enable")
def admin_enable(account: Annotated[str, typer.Argument(help="Account name or id")]) -> None:
    """Enable a disabled account (its unrevoked keys work again)."""
    updated = _run(lambda: _call("PATCH", f"/admin/accounts/{_account(account)['id']}", json={"disabled": False}))
    out.print(f"account [bold]{updated['name']}[/] enabled")


@admin_app.command("keys")
def admin_keys(account: Annotated[str, typer.Argument(help="Account name or id")]) -> None:
    """An account's keys (prefix and label; never the keys themselves)."""
    keys = _run(lambda: _call("GET", f"/admin/accounts/{_account(account)['id']}/keys"))
    table = Table("id", "prefix", "name", "created", "last used", "revoked")
    for k in keys:
        table.add_row(k["id"], k["prefix"] + "…", k["name"] or "", _when(k["created_at"]), _when(k["last_used_at"]),
                      _when(k["revoked_at"]))
    out.print(table)


@admin_app.command("issue-key")
def admin_issue_key(
    account: Annotated[str, typer.Argument(help="Account name or id")],
    name: Annotated[str | None, typer.Option(help="A label for the key, e.g. ci or laptop")] = None,
) -> None:
    """Issue a new key for an account (printed once)."""
    _print_issued(_run(lambda: _call("POST", f"/admin/accounts/{_account(account)['id']}/keys", json={"name": name})))


@admin_app.command("revoke")
def admin_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (see `constellation admin keys`)")]) -> None:
    """Revoke a key: it stops working at once and its open streams close."""
    revoked = _run(lambda: _call("POST", f"/admin/keys/{key_id}/revoke"))
    out.print(f"key {revoked['id']} ({revoked['prefix']}…) revoked at {_when(revoked['revoked_at'])}")


@admin_app.command("limits")
def admin_limits(
    account: Annotated[str, typer.Argument(help="Account name or id")],
    max_priority: Annotated[int | None, typer.Option(help="Highest job priority it may ask for")] = None,
    max_active_jobs: Annotated[int | None, typer.Option(help="Jobs queued or running at once")] = None,
    max_active_tiles: Annotated[int | None, typer.Option(help="Tiles of its queued or running jobs")] = None,
    max_streams: Annotated[int | None, typer.Option(help="Open WebSocket/SSE streams")] = None,
    default: Annotated[list[str] | None, typer.Option(help="Put this limit back to the default (repeatable)")] = None,
) -> None:
    """Show an account's limits, or set some (the others keep theirs)."""
    chosen = _run(lambda: _account(account))
    given = {name: value for name, value in (("max_priority", max_priority), ("max_active_jobs", max_active_jobs),
                                              ("max_active_tiles", max_active_tiles), ("max_streams", max_streams))
             if value is not None}
    given.update({name: None for name in default or []})
    if given:
        chosen = _run(lambda: _call("PATCH", f"/admin/accounts/{chosen['id']}", json={"limits": given}))
    table = Table("limit", "effective", "override")
    for name, value in chosen["limits"].items():
        override = chosen["limit_overrides"].get(name)
        table.add_row(name, "none" if value is None else str(value), "-" if override is None else str(override))
    out.print(table)

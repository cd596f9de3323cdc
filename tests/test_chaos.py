"""Chaos: while a backlog drains on two devices, SIGKILL each part of the stack in turn — a device worker,
a run worker, the Dagster daemon, the dispatcher, the API, NATS and Postgres — restarting what a
supervisor would restart. Afterwards every job has succeeded with each of its tiles exactly once, no job
ever had two live Dagster runs, every state change is an `events` row that reached a stream client
resuming across the API's death, no pool slot or step is left held, no process ends unless it was killed,
and nothing outlives the stack.

It brings its own Postgres and NATS (it kills them); everything is on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from websockets.sync.client import connect as ws_connect

from constellation_core.db import migrate
from constellation_core.devices import simulated_devices
from constellation_core.vocabulary import TERMINAL_JOB_STATES
from constellation_core.waiting import Timeout, free_port, wait_for
from constellation_dagster.inference.ops import OUTAGE_RETRIES, OUTAGE_RETRY_WAIT_S
from constellation_dagster.instance import WORKER_TAG
from constellation_devstack.commands import processes_carrying
from constellation_devstack.nats import NATS_CREDENTIALS_ENV, NatsServer
from constellation_devstack.postgres import PG_CREDENTIALS_ENV, PostgresCluster
from tests.conftest import fresh_database_url
from tests.e2e_stack import running_stack
from tests.samples import GENEVA
from tests.test_e2e import _step_timeline, account_in

pytestmark = pytest.mark.e2e
JOBS = int(os.environ.get("CONSTELLATION_CHAOS_JOBS", "24"))  # bench/chaos_drain.py sets it for its baseline
# Kills land on a backlog: below this many unfinished jobs, TOP_UP more are submitted before the next kill.
TOP_UP_BELOW, TOP_UP = 3, 4
DEVICES = simulated_devices(2)
DRAIN_DEADLINE_S = 300
KILL_GAP_S = 3  # between one kill's recovery and the next
# The same backlog with no kill, for the drain-time baseline (bench/chaos_drain.py sets it).
BASELINE = os.environ.get("CONSTELLATION_CHAOS_BASELINE") == "1"


@contextlib.contextmanager
def own_services() -> Iterator[tuple[PostgresCluster, NatsServer, str]]:
    """A Postgres and a NATS of this test alone, and a migrated template database on it."""
    tmp = Path(tempfile.mkdtemp(prefix="constellation-chaos-"))
    tmp.chmod(0o755)  # the postgres user must reach its data folder inside
    # SIGKILLed below: with `synchronous_commit=off` it could lose a job it had acknowledged (201) to the
    # client a moment before (seen in CI: a job submitted as Postgres was killed was gone afterwards).
    pg = PostgresCluster(tmp / "postgres", free_port(), tuned_for_tests=True, commits_survive_kill=True)
    nats = NatsServer(tmp / "nats" / "jetstream", free_port())
    patch = pytest.MonkeyPatch()
    try:
        pg.start()
        pg.ensure_service_roles()
        nats.start()
        template = fresh_database_url(pg.url(), "constellation_template")
        migrate(template)
        # The stack's processes log in as their own roles and users of these servers.
        patch.setenv(PG_CREDENTIALS_ENV, str(pg.credentials_file))
        patch.setenv(NATS_CREDENTIALS_ENV, str(nats.credentials_file))
        yield pg, nats, make_url(template).database
    finally:
        patch.undo()
        nats.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


class ResumingClient(threading.Thread):
    """A stream client of one account that reconnects with `after=<last id>` whenever it is cut."""

    def __init__(self, ws_base: str, headers: dict[str, str]):
        super().__init__(daemon=True)
        self.ws_base, self.headers = ws_base, headers
        self.received: list[dict] = []
        self.last = 0
        self.reconnects = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with ws_connect(f"{self.ws_base}/stream?after={self.last}", additional_headers=self.headers,
                                open_timeout=5) as ws:
                    while not self.done.is_set():
                        try:
                            message = json.loads(ws.recv(timeout=1))
                        except TimeoutError:
                            continue
                        if isinstance(message.get("id"), int):
                            self.received.append(message)
                            self.last = max(self.last, message["id"])
            except Exception:  # noqa: BLE001 - the API or NATS died under it: resume
                self.reconnects += 1
                self.done.wait(0.5)


_TERMINAL = {DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED}


def _terminal_events(instance, record) -> list[tuple[float, int | None, str]]:
    return [(e.timestamp, e.dagster_event.pid if e.dagster_event else None, e.user_message[:80])
            for e in instance.all_logs(record.dagster_run.run_id, of_type=_TERMINAL)]


def _stopped_being_live(instance, record) -> float | None:
    """When a run stopped running: the last end its own run worker wrote; when the worker wrote none
    (it died), the first end anyone wrote for it. Not the run record's end time: when Postgres restarts
    under a run worker's last write, Dagster's monitor later marks the long-dead run failed again."""
    worker_pid = record.dagster_run.tags.get(WORKER_TAG, "").split(":")[0]
    ends = _terminal_events(instance, record)
    own = [ts for ts, pid, _ in ends if worker_pid and str(pid) == worker_pid]
    if own:
        return max(own)
    return min((ts for ts, _, _ in ends), default=record.end_time)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    return f"{pid} (gone)"


def _orphan_report(pid: int) -> str:
    """What an orphan is and is doing: its parent and state, and (for our Python processes, which dump
    their threads' stacks on SIGUSR1 into their stderr) the end of its stderr, read through /proc
    (the stack's log folder is gone by now; the file stays readable while the process holds it)."""
    report = f"- {_cmdline(pid)}"
    with contextlib.suppress(OSError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        report = f"- pid {pid} (parent {fields[1]}, state {fields[0]}, {age_s:.0f} s old): {_cmdline(pid)}"
        os.kill(pid, signal.SIGUSR1)
        threading.Event().wait(1)
        stderr = Path(f"/proc/{pid}/fd/2").read_bytes()[-6000:].decode(errors="replace")
        report += f"\n  its stderr ends:\n{stderr}"
    return report


@pytest.mark.timeout(DRAIN_DEADLINE_S + 300)
def test_sigkill_of_every_part_of_the_stack_during_a_backlog_loses_and_doubles_nothing():
    started = time.monotonic()

    def say(what: str) -> None:  # the test's own timeline, for a failure's report (-s shows it live)
        print(f"chaos +{time.monotonic() - started:6.1f}s {what}", flush=True)

    figures: dict[str, object] = {"jobs": JOBS}
    with own_services() as (pg, nats, template):
        with running_stack(pg.url(), nats.url, template, simulated=len(DEVICES)) as stack:
            marker = f"CONSTELLATION_LOCAL_DIR={stack['local_dir']}"
            processes = {p.name: p for p in stack["processes"]}
            engine = create_engine(stack["database_url"], pool_pre_ping=True)
            account = account_in(stack["database_url"], "chaos")
            client = ResumingClient(stack["ws"], account.headers)
            client.start()
            job_ids, submit_s = [], []

            def submit(count: int) -> None:
                for _ in range(count):
                    i = len(job_ids)
                    sent = time.monotonic()
                    response = httpx.post(f"{stack['api']}/jobs", headers=account.headers, timeout=30, json={
                        "name": f"chaos-{i}", "zoom": 16, "area": GENEVA, "batch_size": 8,
                        "mode": "parallel" if i % 2 else "serial", "priority": i % 3})
                    submit_s.append(time.monotonic() - sent)
                    assert response.status_code == 201, response.text
                    job_ids.append(response.json()["id"])

            backlog_started = time.monotonic()
            submit(JOBS)
            say(f"{JOBS} jobs submitted (slowest POST /jobs {max(submit_s):.2f} s)")

            def unfinished() -> int:
                with engine.connect() as conn:
                    return conn.execute(text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND state NOT IN "
                                             "('succeeded', 'failed', 'canceled')"), {"ids": job_ids}).scalar_one()

            def busy_device_worker() -> int | None:
                with engine.connect() as conn:
                    return conn.execute(text(
                        "SELECT (g.spec->>'worker_pid')::int FROM steps s JOIN gpus g ON g.id = s.gpu_id "
                        "JOIN jobs j ON j.id = s.job_id WHERE s.finished_at IS NULL AND j.tiles_done > 0 "
                        "AND j.id = ANY(:ids) LIMIT 1"), {"ids": job_ids}).scalar()

            def running_run_worker() -> int | None:
                with DagsterInstance.from_config(stack["dagster_home"]) as instance:
                    for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
                        tag = record.dagster_run.tags.get("constellation/run_worker")
                        if tag:
                            return int(tag.split(":")[0])
                return None

            def restart(name: str) -> None:
                process = processes[name]
                _kill(process.process.pid)
                process.process.wait(timeout=10)
                process.start()

            def restart_postgres() -> None:
                postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
                backends = _children(postmaster)
                for pid in (postmaster, *backends):
                    _kill(pid)
                wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in (postmaster, *backends)),
                         timeout=20, what="Postgres's processes to die", interval=0.1)
                wait_for(lambda: pg.start() or True, timeout=60, what="Postgres to start again", interval=0.5)

            def restart_nats() -> None:
                _kill(nats._process.pid)
                nats._process.wait(timeout=10)
                nats.start()

            kills = [] if BASELINE else [
                ("a device worker", lambda: _kill(wait_for(busy_device_worker, timeout=120,
                                                            what="a busy device worker", interval=0.1))),
                ("a run worker", lambda: _kill(wait_for(running_run_worker, timeout=120,
                                                         what="a running run worker", interval=0.2))),
                ("the Dagster daemon", lambda: restart("dagster-daemon")),
                ("the dispatcher", lambda: restart("dispatcher")),
                ("the API", lambda: restart("api")),
                ("NATS", restart_nats),
                ("Postgres", restart_postgres),
            ]
            done_kills = []
            for what, kill in kills:
                # Every blow lands on a backlog: should the stack drain faster than the kills come (it did
                # once in CI), top the backlog up first; the figures say how many jobs were added.
                if (left := unfinished()) < TOP_UP_BELOW:
                    say(f"{left} jobs unfinished: topping the backlog up by {TOP_UP}")
                    submit(TOP_UP)
                say(f"killing {what} ({unfinished()} jobs unfinished)")
                kill()
                done_kills.append(what)
                # The API answers again before the next blow (it is what users and the client reach).
                wait_for(lambda: httpx.get(f"{stack['api']}/readyz", timeout=2).status_code == 200, timeout=60,
                         what=f"the API to be ready after killing {what}", interval=0.2)
                threading.Event().wait(KILL_GAP_S)
            figures["kills"] = done_kills
            figures["jobs"] = len(job_ids)
            figures["topped_up"] = len(job_ids) - JOBS

            def logs() -> str:
                return "\n".join(f"--- {p.name}\n{p.log_tail(30)}" for p in stack["processes"])

            say("every kill done; waiting for the backlog to drain")
            left = [unfinished()]

            def drained() -> bool:  # says each change of the count, for the timeline
                if (now := unfinished()) != left[-1]:
                    say(f"{now} jobs unfinished")
                    left.append(now)
                return now == 0

            try:
                wait_for(drained, timeout=DRAIN_DEADLINE_S, what="every job to end", interval=1)
            except Exception as exc:  # noqa: BLE001
                with engine.connect() as conn:
                    stuck = conn.execute(text("SELECT id, state, tiles_done, tiles_total, dispatched_at FROM jobs "
                                              "WHERE id = ANY(:ids) AND state NOT IN ('succeeded', 'failed', "
                                              "'canceled')"), {"ids": job_ids}).all()
                # The cause last: a report cut in the middle (as CI's is) still ends with it.
                pytest.fail(f"{logs()}\n{_step_timeline(stack, [str(row.id) for row in stuck])}\n"
                            f"{exc}\nunfinished: {stuck}")
            say("drained")
            figures["drain_s"] = round(time.monotonic() - backlog_started, 1)  # first submission → last job ended

            with engine.connect() as conn:
                states = dict(conn.execute(text("SELECT id::text, state FROM jobs WHERE id = ANY(:ids)"),
                                           {"ids": job_ids}).all())
                counts = conn.execute(text(
                    "SELECT j.id::text, (SELECT count(*) FROM tiles t WHERE t.job_id = j.id) AS planned, "
                    "(SELECT count(*) FROM tile_results r WHERE r.job_id = j.id) AS results, "
                    "(SELECT count(DISTINCT (z, x, y)) FROM tile_results r WHERE r.job_id = j.id) AS distinct_tiles "
                    "FROM jobs j WHERE j.id = ANY(:ids)"), {"ids": job_ids}).all()
                state_events = conn.execute(text(
                    "SELECT id, job_id::text, payload->>'state' AS state FROM events "
                    "WHERE job_id = ANY(:ids) AND type = 'job.state' ORDER BY id"), {"ids": job_ids}).all()
                open_steps = conn.execute(text("SELECT count(*) FROM steps WHERE job_id = ANY(:ids) "
                                               "AND finished_at IS NULL"), {"ids": job_ids}).scalar_one()
            figures["terminal"] = sum(state in TERMINAL_JOB_STATES for state in states.values())
            figures["succeeded"] = sum(state == "succeeded" for state in states.values())
            figures["duplicates"] = sum(c.results - c.distinct_tiles for c in counts)
            figures["missing_tiles"] = sum(c.planned - c.distinct_tiles for c in counts)

            # The client saw every state change once (it may still be catching up after the drain).
            wanted = {e.id for e in state_events}

            def client_caught_up() -> bool:
                return wanted <= {m["id"] for m in list(client.received)}

            with contextlib.suppress(Exception):
                wait_for(client_caught_up, timeout=30, what="the stream client to catch up", interval=0.2)
            client.done.set()
            client.join(timeout=10)
            seen = [m["id"] for m in client.received if m["type"] == "job.state"]
            figures["lost_events"] = len(wanted - set(seen))
            figures["events_received_twice"] = len(seen) - len(set(seen))
            figures["stream_reconnects"] = client.reconnects

            with DagsterInstance.from_config(stack["dagster_home"]) as instance:
                held = {d.pool: instance.event_log_storage.get_concurrency_info(d.pool).claimed_slots
                        for d in DEVICES}
                overlapping = []
                for job_id in job_ids:
                    # A run that never started (e.g. failed by Dagster's start timeout) was never live.
                    runs = sorted((r for r in instance.get_run_records(RunsFilter(
                        tags={"constellation/job_id": job_id})) if r.start_time is not None),
                        key=lambda r: r.start_time)
                    for earlier, later in zip(runs, runs[1:]):
                        earlier_end = _stopped_being_live(instance, earlier)
                        if later.start_time and (earlier_end is None or later.start_time < earlier_end):
                            overlapping.append([(r.dagster_run.run_id[:8], r.dagster_run.status.value, r.start_time,
                                                 _stopped_being_live(instance, r), r.end_time,
                                                 {k: v for k, v in r.dagster_run.tags.items()
                                                  if k.startswith("dagster/") or k == WORKER_TAG},
                                                 _terminal_events(instance, r))
                                                for r in (earlier, later)])
            figures["held_slots"] = sum(len(slots) for slots in held.values())
            figures["open_steps"] = open_steps
            figures["overlapping_runs"] = len(overlapping)
            # A killed process was started again; none other should have ended (the dispatcher did when
            # a COMMIT failed under Postgres's kill: a supervisor restarts it, this stack does not).
            figures["died_unkilled"] = sorted(name for name, p in processes.items() if not p.alive())
            print(f"\nchaos figures: {json.dumps(figures)}")

            problems = []
            if figures["succeeded"] != len(job_ids):
                failed = [job_id for job_id, state in states.items() if state != "succeeded"]
                with engine.connect() as conn:
                    reasons = conn.execute(text("SELECT job_id, payload FROM events WHERE job_id = ANY(:ids) "
                                                "AND type = 'job.state' ORDER BY id"), {"ids": failed}).all()
                problems.append(f"jobs that did not succeed: {reasons}\n{_step_timeline(stack, failed)}")
            if figures["duplicates"] or figures["missing_tiles"]:
                problems.append(f"tiles not done exactly once: {counts}")
            for job_id in job_ids:
                job_states = [e.state for e in state_events if e.job_id == job_id]
                if not (job_states and job_states[0] == "queued" and "running" in job_states
                        and job_states[-1] in TERMINAL_JOB_STATES):
                    problems.append(f"job {job_id} changed state as {job_states}")
            if figures["lost_events"] or figures["events_received_twice"]:
                lost = [(e.id, e.job_id, e.state) for e in state_events if e.id in wanted - set(seen)]
                twice = sorted({i for i in seen if seen.count(i) > 1})
                problems.append(f"the resuming stream client did not get every state change once: lost {lost}, "
                                f"twice {twice}, the client's last id {client.last}")
            if figures["held_slots"] or open_steps:
                problems.append(f"held pool slots {held}, open steps {open_steps}")
            if overlapping:
                problems.append(f"jobs with two live runs at once: {overlapping}")
            if figures["died_unkilled"]:
                problems.append(f"processes that ended without being killed: {figures['died_unkilled']}")
            engine.dispose()
            if problems:  # the problems last, after the logs: a report cut in the middle still ends with them
                pytest.fail(f"{logs()}\n" + "\n".join(problems) + f"\nchaos figures: {json.dumps(figures)}\n"
                            + "; ".join(problem.split(":")[0] for problem in problems))
    # Nothing the stack started outlives it: no orphan of a killed parent is left running (the Postgres
    # and NATS this test restarted carry the marker too; they are stopped by now). Run workers outlive
    # the daemon by design (it can restart under them); one still running when the stack stopped (a
    # late retry of a run whose job had ended, seen in CI) rides out the lost Postgres for the ops'
    # outage retries, then ends within a few seconds: that long, and no longer.
    settle_s = OUTAGE_RETRIES * OUTAGE_RETRY_WAIT_S + 30
    try:
        wait_for(lambda: not processes_carrying(marker), timeout=settle_s, what="the stack's processes to be gone")
    except Timeout:
        orphans = processes_carrying(marker)
        report = "\n".join(_orphan_report(pid) for pid in orphans)
        for pid in orphans:
            _kill(pid)
        pytest.fail(f"orphans:\n{report}")

"""PgBouncer, which Dagster's processes reach Postgres through, lets them in again within seconds of a
Postgres restart (its default waits 15 s after a failed server login: every run worker, sensor and
daemon thread was refused for that long after each restart, seen in the chaos test)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from constellation_core.waiting import free_port, port_open, wait_for
from constellation_devstack.credentials import scram_verifier
from constellation_devstack.pgbouncer import SERVER_LOGIN_RETRY_S, PgBouncer
from constellation_devstack.postgres import ensure_login_roles


@contextlib.contextmanager
def forwarding(listen_port: int, to_port: int) -> Iterator[None]:
    """Postgres "back" on `listen_port`: a TCP forwarder to the real server on 127.0.0.1."""
    server = socket.create_server(("127.0.0.1", listen_port))
    server.settimeout(0.2)
    done = threading.Event()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not done.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", to_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        server.close()


def test_dagsters_pooler_logs_in_again_within_seconds_of_postgres_coming_back():
    admin = make_url(os.environ["CONSTELLATION_TEST_PG_ADMIN_URL"])
    down_port = free_port()  # where "Postgres" listens: nothing, until it comes back
    root = Path(tempfile.mkdtemp(prefix="constellation-pgbouncer-"))
    root.chmod(0o755)  # PgBouncer runs as postgres when the tests run as root
    pooler = PgBouncer(root / "pgbouncer", free_port(), admin.set(port=down_port).render_as_string(hide_password=False),
                       {admin.username: admin.password})
    pooler.write_config()
    url = make_url(pooler.pooled_url(admin.render_as_string(hide_password=False))).set(
        drivername="postgresql").render_as_string(hide_password=False)

    def connects() -> bool:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    process = subprocess.Popen(pooler.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open("127.0.0.1", pooler.port), timeout=20, what="PgBouncer", interval=0.1)
        with pytest.raises(psycopg.OperationalError):
            connects()  # Postgres is away: the pooler's login upstream fails (the client waits, then gives up)
        with forwarding(down_port, admin.port or 5432):
            # Back: in at most the retry interval and a margin, not PgBouncer's default 15 s.
            wait_for(connects, timeout=SERVER_LOGIN_RETRY_S + 5,  # (a refused connection counts as "not yet")
                     what="a connection through PgBouncer after Postgres came back", interval=0.2)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(root, ignore_errors=True)



def test_the_pooler_holds_each_service_roles_scram_secret_not_its_password_and_logs_it_in():
    """A service role's secret on the server and in PgBouncer's auth file are one (`scram_verifier`):
    PgBouncer checks a client's proof with it and logs in upstream with that proof; no password is on
    its disk; a wrong password is refused."""
    admin = make_url(os.environ["CONSTELLATION_TEST_PG_ADMIN_URL"])
    role, password = "constellation_scram_test", secrets.token_urlsafe(24)
    ensure_login_roles(admin.render_as_string(hide_password=False), {role: password})
    root = Path(tempfile.mkdtemp(prefix="constellation-pgbouncer-"))
    root.chmod(0o755)  # PgBouncer runs as postgres when the tests run as root
    pooler = PgBouncer(root / "pgbouncer", free_port(), admin.render_as_string(hide_password=False),
                       {role: scram_verifier(password)})
    pooler.write_config()
    assert password not in (root / "pgbouncer" / "userlist.txt").read_text()

    def url(secret: str) -> str:
        return make_url(pooler.pooled_url(admin.render_as_string(hide_password=False))).set(
            drivername="postgresql", username=role, password=secret, database="postgres",
        ).render_as_string(hide_password=False)

    with psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()[0]
    assert stored == scram_verifier(password)

    process = subprocess.Popen(pooler.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open("127.0.0.1", pooler.port), timeout=20, what="PgBouncer", interval=0.1)
        for _ in range(2):  # the second login finds the server connection the first left in the pool
            with psycopg.connect(url(password), connect_timeout=5) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(url(password + "x"), connect_timeout=5)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(root, ignore_errors=True)

"""The stack's Postgres lets nobody in without a password, and each service logs in as a role that can
do its work and no more: no process on the host gets a superuser connection for free, and a
compromised API cannot change the schema or read Dagster's storage; the usage service only reads."""

from __future__ import annotations

import json

import psycopg
import pytest
from sqlalchemy.engine import make_url

from constellation_core.settings import Settings
from constellation_devstack.commands import supervisor_config
from constellation_devstack.postgres import PROGRAM_ROLES, SERVICE_ROLES
from constellation_devstack.setup import libpq_url
from tests.conftest import fresh_database_url, role_url


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(libpq_url(url), connect_timeout=5, autocommit=True)


def test_postgres_refuses_a_login_without_its_password(database_url):
    url = make_url(database_url)
    server = f"{url.host}:{url.port}/{url.database}"
    for stranger in (f"postgresql://postgres@{server}", f"postgresql://postgres:not-its-password@{server}",
                     f"postgresql://constellation_api@{server}", f"postgresql://nobody@{server}"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            _connect(stranger)
    with _connect(database_url) as conn:  # the superuser's own password lets it in
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_the_api_role_writes_rows_but_never_the_schema(database_url):
    with _connect(role_url(database_url, "constellation_api")) as conn:
        assert conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (False, False, False)
        conn.execute("INSERT INTO accounts (name, role) VALUES ('roles-test', 'member')")
        assert conn.execute("SELECT count(*) FROM accounts WHERE name = 'roles-test'").fetchone() == (1,)
        for statement in ("DROP TABLE jobs", "ALTER TABLE jobs ADD COLUMN x int", "CREATE TABLE stolen (x int)",
                          "TRUNCATE events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_usage_role_only_reads_accounts_keys_and_usage(database_url):
    with _connect(role_url(database_url, "constellation_usage")) as conn:
        for table in ("accounts", "api_keys", "usage_daily"):
            conn.execute(f"SELECT count(*) FROM {table}")
        for statement in ("SELECT count(*) FROM tile_results", "SELECT count(*) FROM jobs",
                          "UPDATE accounts SET role = 'admin'", "DELETE FROM api_keys"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_only_dagsters_role_reads_dagsters_storage(pg_admin_url, database_url, tmp_path):
    from constellation_devstack.setup import init_dagster_storage, prepare_dagster_home

    storage = fresh_database_url(pg_admin_url, "dagster_roles").replace("+psycopg", "+psycopg2")
    init_dagster_storage(prepare_dagster_home(tmp_path / "home"), storage, train_model=False)
    with _connect(role_url(storage, "constellation_dagster")) as conn:
        conn.execute("SELECT count(*) FROM runs")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE runs")
    with _connect(role_url(storage, "constellation_api")) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT count(*) FROM runs")


def test_each_program_of_the_demo_logs_in_as_its_own_role(tmp_path):
    settings = Settings(CONSTELLATION_LOCAL_DIR=tmp_path)
    config = supervisor_config(settings, local_postgres=True, local_nats=False)
    superuser_password = json.loads((tmp_path / "postgres" / "credentials.json").read_text())["postgres"]
    for section in config.split("[program:")[1:]:
        name = section.split("]", 1)[0]
        urls = [make_url(value.split('"', 1)[0]) for value in section.split('URL="')[1:]]
        if name not in PROGRAM_ROLES:
            assert not urls, f"{name} has no business with the database"
            continue
        assert urls, f"{name} got no database URL"
        assert {url.username for url in urls} == {PROGRAM_ROLES[name]}, section
        if name != "setup":
            assert superuser_password not in section, f"{name} was handed the superuser's password"
    assert set(PROGRAM_ROLES.values()) - {"postgres"} == set(SERVICE_ROLES)


def test_compose_gives_each_service_the_same_role_and_nats_user_as_the_demo():
    import re

    import yaml

    from constellation_core.settings import REPO_ROOT
    from constellation_devstack.nats import PROGRAM_USERS

    services = yaml.safe_load((REPO_ROOT / "infra" / "docker-compose.yml").read_text())["services"]
    checked = 0
    for name, service in services.items():
        env = service.get("environment") or {}
        for variable, expected in (("DATABASE_URL", PROGRAM_ROLES.get(name)), ("DAGSTER_PG_URL", PROGRAM_ROLES.get(name)),
                                   ("NATS_URL", PROGRAM_USERS.get(name))):
            if variable in env:
                login = re.match(r"^[a-z0-9+]+://([^:@]+):\$\{[A-Z_]+:\?[^}]*\}@", env[variable])
                assert login, f"{name}'s {variable} must log in with a password from the environment"
                assert login.group(1) == expected, f"{name} logs in as {login.group(1)}, `make demo` as {expected}"
                checked += 1
    assert checked >= 12


def test_an_older_demo_cluster_that_trusted_local_logins_gets_passwords_when_it_starts():
    import subprocess
    import tempfile
    from pathlib import Path

    from constellation_core.waiting import free_port
    from constellation_devstack.postgres import PostgresCluster

    with tempfile.TemporaryDirectory(prefix="constellation-old-demo-") as tmp:
        Path(tmp).chmod(0o755)  # the postgres user must reach its data folder inside
        cluster = PostgresCluster(Path(tmp) / "postgres", free_port(), tuned_for_tests=True)
        cluster._prepare_dirs()
        # What `make demo` made before: initdb --auth=trust, no password anywhere.
        subprocess.run(cluster._owned([str(cluster.bindir / "initdb"), "-D", str(cluster.data_dir), "-U", "postgres",
                                       "--auth=trust", "--encoding=UTF8", "--no-locale"]), check=True, stdout=subprocess.DEVNULL)
        try:
            cluster.start()
            with _connect(cluster.url()) as conn:
                assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
            with pytest.raises(psycopg.OperationalError, match="password"):
                _connect(f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres")
        finally:
            cluster.stop()

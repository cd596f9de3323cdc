"""Bring a (local or external) stack to a usable state: databases, migrations, stream, Dagster home."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from constellation_core.bus import connect, ensure_stream
from constellation_core.db import head_revision, migrate
from constellation_core.settings import REPO_ROOT, Settings

DAGSTER_YAML = REPO_ROOT / "infra" / "dagster" / "dagster.yaml"


def libpq_url(url: str, database: str | None = None) -> str:
    """A SQLAlchemy URL as a plain libpq URL (optionally for another database)."""
    parsed = make_url(url).set(drivername="postgresql")
    if database:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def create_database(url: str) -> bool:
    """Create the database `url` names if it is missing; True if it was created."""
    name = make_url(url).database
    with psycopg.connect(libpq_url(url, "postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def schema_at_head(url: str) -> bool:
    with psycopg.connect(libpq_url(url), connect_timeout=2) as conn:
        row = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
        if not row[0]:
            return False
        current = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return current is not None and current[0] == head_revision()


def dagster_storage_ready(url: str) -> bool:
    with psycopg.connect(libpq_url(url), connect_timeout=2) as conn:
        return conn.execute("SELECT to_regclass('runs') IS NOT NULL").fetchone()[0]


DAGSTER_ROLE = "constellation_dagster"  # made by migration 0011


def grant_dagster_storage(storage_url: str) -> None:
    """Dagster's processes log in as `constellation_dagster`: rows of its storage, not its schema
    (Dagster's schema migrations are an operator's `dagster instance migrate`, as the owner)."""
    with psycopg.connect(libpq_url(storage_url), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DAGSTER_ROLE,)).fetchone():
            return  # an external server whose operator manages Dagster's rights
        role = sql.Identifier(DAGSTER_ROLE)
        for statement in (
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}",
            "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {}",
        ):
            conn.execute(sql.SQL(statement).format(role))


def prepare_dagster_home(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DAGSTER_YAML, home / "dagster.yaml")
    return home


def init_dagster_storage(home: Path, storage_url: str, *, train_model: bool = True) -> None:
    """Create Dagster's tables once (before the daemon and webserver race to do it), give each
    device its pool limit, and train the model if it never was."""
    import os

    from dagster import DagsterInstance
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from constellation_core.devices import discover
    from constellation_dagster.bootstrap import ensure_model, set_device_pools

    os.environ["DAGSTER_PG_URL"] = storage_url
    # The instance config says not to autocreate (every process would look for the tables each time
    # it makes an instance): the storages create them here, once.
    for storage in (PostgresRunStorage, PostgresEventLogStorage, PostgresScheduleStorage):
        storage(storage_url, should_autocreate_tables=True).dispose()
    grant_dagster_storage(storage_url)
    with DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs_count()
        set_device_pools(instance, discover())
        if train_model:
            ensure_model(instance)


def create_stream(nats_url: str) -> None:
    """The JetStream stream every event is published to (idempotent)."""

    async def _stream() -> None:
        nc = await connect(nats_url, name="constellation-setup")
        try:
            await ensure_stream(nc.jetstream())
        finally:
            await nc.drain()

    asyncio.run(_stream())


def prepare_stack(settings: Settings, dagster_home: Path) -> None:
    """Databases, migrations, NATS stream, Dagster storage. Idempotent."""
    create_database(settings.sync_database_url)
    create_database(settings.dagster_storage_url)
    migrate(settings.sync_database_url)
    create_stream(settings.nats_url)
    prepare_dagster_home(dagster_home)
    init_dagster_storage(dagster_home, settings.dagster_storage_url)

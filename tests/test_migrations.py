"""The Alembic migrations build the schema the code expects, and undo it cleanly."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from constellation_core.db import alembic_config, migrate
from constellation_core.tables import metadata
from tests.conftest import fresh_database_url

POSTGIS_TABLES = {"spatial_ref_sys"}


def test_migrated_schema_matches_table_definitions(database_url):
    engine = create_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"include_name": lambda name, type_, parent: not (type_ == "table" and name in POSTGIS_TABLES)},
        )
        diff = compare_metadata(context, metadata)
    engine.dispose()
    assert diff == [], f"migrations and constellation_core.tables differ: {diff}"


def test_downgrade_to_base_and_upgrade_again(pg_admin_url):
    url = fresh_database_url(pg_admin_url, "migrations")
    migrate(url)
    command.downgrade(alembic_config(url), "base")
    engine = create_engine(url)
    assert "jobs" not in inspect(engine).get_table_names()
    migrate(url)
    assert {"jobs", "runs", "gpus", "events", "tiles", "tile_results", "areas", "accounts", "api_keys"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def test_events_are_append_only(engine):
    with engine.begin() as conn:
        event_id = conn.execute(text("INSERT INTO events (type) VALUES ('job.log') RETURNING id")).scalar_one()
    for statement in ("UPDATE events SET type = 'x' WHERE id = :id", "DELETE FROM events WHERE id = :id"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement), {"id": event_id})


def test_event_ids_increase(engine):
    with engine.begin() as conn:
        ids = [conn.execute(text("INSERT INTO events (type) VALUES ('job.log') RETURNING id")).scalar_one()
               for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3

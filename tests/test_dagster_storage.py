"""Constellation's Dagster storages (`constellation_dagster/storage.py`): dagster-postgres's with pooled
connections and the schema checked once. They override dagster-postgres internals; these tests fail
loudly when a Dagster upgrade changes what they rely on."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
from dagster._core.storage.schedules.sql_schedule_storage import SqlScheduleStorage
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from sqlalchemy import event
from sqlalchemy.pool import NullPool, QueuePool

from constellation_dagster import storage as storage_module
from constellation_dagster.storage import EventLogStorage, RunStorage, ScheduleStorage, warm
from tests.conftest import drop_database, fresh_database_url


@pytest.fixture(scope="module")
def dagster_pg_url(pg_admin_url: str) -> Iterator[str]:
    """A Dagster storage database with its tables, as `constellation-dev setup` makes it."""
    url = fresh_database_url(pg_admin_url, "dagster_test")
    psycopg2_url = url.replace("postgresql+psycopg://", "postgresql+psycopg2://", 1)
    for storage in (PostgresRunStorage, PostgresEventLogStorage, PostgresScheduleStorage):
        storage(psycopg2_url, should_autocreate_tables=True).dispose()
    yield psycopg2_url
    drop_database(url)


@pytest.fixture(autouse=True)
def fresh_process_state():
    """Each test starts as a fresh process would: no engine or schema answer kept from another."""
    storage_module._engines.clear()
    storage_module._schema_answers.clear()
    yield
    for engine in storage_module._engines.values():
        engine.dispose()
    storage_module._engines.clear()
    storage_module._schema_answers.clear()


def test_the_storages_override_methods_that_still_exist():
    for cls, base in ((RunStorage, PostgresRunStorage), (EventLogStorage, PostgresEventLogStorage),
                      (ScheduleStorage, PostgresScheduleStorage)):
        overridden = [name for name in vars(cls) if not name.startswith("__") and name not in ("from_config_value",)]
        missing = [name for name in overridden if not hasattr(base, name)]
        assert not missing, f"{base.__name__} no longer has {missing}: review constellation_dagster/storage.py"
    # what the memoized checks wrap is still reflection, called where we expect it
    assert "get_columns" in SqlRunStorage.has_run_stats_index_cols.__code__.co_names
    assert "get_table_names" in SqlScheduleStorage._has_instigators_table.__code__.co_names


def _queries(engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: seen.append(statement))
    return seen


def test_run_storage_pools_connections_and_reflects_the_schema_once(dagster_pg_url):
    stock = PostgresRunStorage(dagster_pg_url, should_autocreate_tables=False)
    assert isinstance(stock._engine.pool, NullPool)  # what this module exists to change

    storage = RunStorage(dagster_pg_url, should_autocreate_tables=False)
    assert isinstance(storage._engine.pool, QueuePool)
    queries = _queries(storage._engine)
    connections = []
    event.listen(storage._engine, "connect", lambda *_: connections.append(1))
    for _ in range(5):
        storage.get_run_records(limit=1)
    reflections = [q for q in queries if "pg_catalog.pg_attribute" in q]
    assert len(reflections) == 1, f"the runs table was reflected {len(reflections)} times in 5 calls"
    assert len(connections) == 1, f"{len(connections)} connections opened for 5 sequential calls"


def test_schedule_and_event_log_storages_check_tables_once(dagster_pg_url):
    schedules = ScheduleStorage(dagster_pg_url, should_autocreate_tables=False)
    queries = _queries(schedules._engine)
    for _ in range(3):
        schedules.all_instigator_state()
    assert len([q for q in queries if "pg_catalog.pg_class" in q]) <= 2

    events = EventLogStorage(dagster_pg_url, should_autocreate_tables=False)
    queries = _queries(events._engine)
    for _ in range(3):
        assert events.has_table("concurrency_slots")
    assert len(queries) == 1
    events.dispose()


def test_warmed_storages_let_a_forked_run_worker_skip_dialect_setup_and_schema_checks(dagster_pg_url):
    """What the zygote does before forking run workers: afterwards a run's storage calls (its run
    record, the model's latest materialization, the concurrency check) make no catalog query and the
    engines need no dialect set-up, though the warm-up's connections are closed."""
    instance = SimpleNamespace(run_storage=RunStorage(dagster_pg_url, should_autocreate_tables=False),
                               event_log_storage=EventLogStorage(dagster_pg_url, should_autocreate_tables=False),
                               schedule_storage=ScheduleStorage(dagster_pg_url, should_autocreate_tables=False))
    engines = [instance.run_storage._engine, instance.event_log_storage._engine]
    assert all(engine.dialect.server_version_info is None for engine in engines)
    warm(instance)
    assert all(engine.dialect.server_version_info is not None for engine in engines)
    assert all(engine.pool.checkedin() == 0 for engine in engines)  # nothing left open to inherit

    seen = [_queries(engine) for engine in engines]
    instance.run_storage.get_run_records(limit=1)
    assert instance.event_log_storage.has_asset_key_col("last_materialization_timestamp")
    assert instance.event_log_storage.supports_global_concurrency_limits
    catalog = [q for q in (*seen[0], *seen[1]) if "pg_catalog" in q or "secondary_indexes" in q]
    assert catalog == [], catalog
    for storage in vars(instance).values():
        storage.dispose()


def test_warming_with_postgres_away_leaves_the_checks_to_each_run_worker(capsys):
    url = "postgresql+psycopg2://nobody:nothing@127.0.0.1:9/dagster"  # nothing listens on port 9
    instance = SimpleNamespace(run_storage=RunStorage(url, should_autocreate_tables=False),
                               event_log_storage=EventLogStorage(url, should_autocreate_tables=False),
                               schedule_storage=ScheduleStorage(url, should_autocreate_tables=False))
    warm(instance)  # does not raise: the zygote goes on forking run workers
    assert "storages not warmed (OperationalError)" in capsys.readouterr().err


def test_storages_made_for_each_sensor_tick_share_one_engine_and_the_schema_answers(dagster_pg_url):
    """What the code server does for every sensor evaluation: an instance (and its storages) from the
    ref, used, then dropped. Five such ticks open one connection and reflect the schema once."""
    config = {"postgres_url": dagster_pg_url, "should_autocreate_tables": False}
    first = RunStorage.from_config_value(None, config)
    queries = _queries(first._engine)
    connections = []
    event.listen(first._engine, "connect", lambda *_: connections.append(1))
    for _ in range(5):
        storage = RunStorage.from_config_value(None, config)
        storage.get_run_records(limit=1)
        storage.dispose()
    assert storage is not first and storage._engine is first._engine
    assert len(connections) == 1, f"{len(connections)} connections opened for 5 ticks"
    assert len([q for q in queries if "pg_catalog.pg_attribute" in q]) == 1
    events = EventLogStorage.from_config_value(None, config)
    assert events._engine is not first._engine  # each storage class keeps a pool of its own


def test_an_event_written_while_postgres_restarts_waits_for_it_and_is_stored_once(dagster_pg_url, monkeypatch):
    """A run worker's event write that failed (Postgres restarting) ended the worker, and with it the run
    (chaos test: five runs failed and were retried per Postgres kill)."""
    import logging
    import time

    from dagster import EventLogEntry
    from sqlalchemy.exc import OperationalError

    monkeypatch.setattr(storage_module, "STORE_RETRY_S", 0.01)
    storage = EventLogStorage(dagster_pg_url, should_autocreate_tables=False)
    refused = {"INSERT": 0, "NOTIFY": 0}
    refuse = {"INSERT": 2, "NOTIFY": 0}

    @event.listens_for(storage._engine, "before_cursor_execute")
    def postgres_restarting(conn, cursor, statement, *_):
        kind = statement.split()[0]
        if statement.startswith(("INSERT INTO event_logs", "NOTIFY")) and refused[kind] < refuse[kind]:
            refused[kind] += 1
            raise OperationalError(statement, {}, Exception("server closed the connection unexpectedly"))

    def entry(message: str) -> EventLogEntry:
        return EventLogEntry(error_info=None, level=logging.INFO, user_message=message, run_id="run-1",
                             timestamp=time.time())

    storage.store_event(entry("stored once Postgres is back"))
    assert refused["INSERT"] == 2
    # Failing after its row was written (the NOTIFY), it is not written again.
    refuse["NOTIFY"] = 1
    with pytest.raises(OperationalError):
        storage.store_event(entry("stored, its NOTIFY lost"))
    messages = [r.event_log_entry.user_message for r in storage.get_records_for_run("run-1").records]
    assert messages == ["stored once Postgres is back", "stored, its NOTIFY lost"]
    storage.dispose()

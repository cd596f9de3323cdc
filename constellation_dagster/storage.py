"""Dagster's Postgres storages, with pooled connections and the schema checked once per process.

Stock `dagster_postgres` storages open a new connection for every query (SQLAlchemy `NullPool`) and
look the schema up again on most calls (`has_run_stats_index_cols` reflects the `runs` table twice per
`get_run_records`; the schedule storage lists every table before each tick query). Measured with
py-spy on the idle daemon: 42 % of its busy time opening connections, 19 % in reflection; in a
P9 backlog each run worker opened ~120 connections and reflected `runs` 8 times.

These subclasses (named in `infra/dagster/dagster.yaml`) change only that:
- a small pool per storage (`POOL_SIZE` kept open, more on demand up to `MAX_OVERFLOW`), a connection
  whose server hung up on it (or that sat idle) pinged on checkout so a Postgres restart costs one
  failed ping, not a failed query (`constellation_core.db.ping_if_in_doubt`: not a round trip before
  each of a run's event writes); a forked child (the zygote's run workers) drops the connections
  it inherited (`constellation_core.db`);
- the schema answers memoized: `constellation-dev setup` creates Dagster's tables before any
  Dagster process starts, and a schema migration (`dagster instance migrate`) means a restart.
  Engines and answers are kept per process, by storage class and database (`pooled_engine`): the
  code server makes new storage objects for every sensor evaluation;
- `warm`: the run-worker zygote sets the engines up and asks the schema checks before it forks, so
  its run workers inherit the answers;
- an event whose write found Postgres restarting waits for it (`EventLogStorage.store_event`), rather
  than end the run worker that wrote it.

They rely on `dagster_postgres` internals (`_engine`, `create_pg_engine`, the `has_*` methods of the
SQL storages): `tests/test_dagster_storage.py` fails loudly when an upgrade changes them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import (
    DagsterPostgresException,
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from constellation_core.db import OUTAGE_ERRORS, forget_in_forked_children, ping_if_in_doubt, through_restarts

POOL_SIZE = 1
MAX_OVERFLOW = 10
POOL_RECYCLE_S = 600
# How long an event's write waits for Postgres (a restart), and how often it tries.
STORE_WAIT_S = 30.0
STORE_RETRY_S = 1.0


# Per process, by storage class and database: the engines (and their pools) and the schema answers.
_engines: dict[tuple[str, str], Engine] = {}
_schema_answers: dict[tuple[str, str, str], Any] = {}
_lock = threading.Lock()


def pooled_engine(storage: Any) -> Engine:
    """The storage's engine: one per storage class and database in a process, shared by every
    storage object of that configuration. Dagster makes an instance — and so new storage objects —
    for each sensor evaluation in the code server; an engine per object meant new connections (a
    SCRAM log-in through PgBouncer each) on every tick. (Storages themselves cannot be shared: Dagster
    registers each with one instance.)"""
    token_provider = storage._token_provider  # noqa: SLF001
    key = (type(storage).__name__, storage.postgres_url)
    with _lock:
        engine = _engines.get(key) if token_provider is None else None
        if engine is None:
            engine = create_pg_engine(storage.postgres_url, token_provider, isolation_level="AUTOCOMMIT",
                                      pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, pool_recycle=POOL_RECYCLE_S)
            forget_in_forked_children(ping_if_in_doubt(engine))
            if token_provider is None:
                _engines[key] = engine
    return engine


def _storage_kwargs(config_value: Mapping[str, Any]) -> dict:
    return {"postgres_url": pg_url_from_config(config_value),
            "should_autocreate_tables": config_value.get("should_autocreate_tables", True),
            "token_provider": get_token_provider_from_config(config_value)}


class _Pooled:
    """Mixed in before a dagster-postgres storage: its engine pooled, its schema answers memoized."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._engine = pooled_engine(self)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value):
        return cls(inst_data=inst_data, **_storage_kwargs(config_value))

    def _memo(self, key: str, answer) -> Any:
        """The schema check's answer, asked once per process for this storage class and database."""
        memo_key = (type(self).__name__, self.postgres_url, key)
        if memo_key not in _schema_answers:
            _schema_answers[memo_key] = answer()
        return _schema_answers[memo_key]


class RunStorage(_Pooled, PostgresRunStorage):
    def has_run_stats_index_cols(self) -> bool:
        return self._memo("run_stats_index_cols", super().has_run_stats_index_cols)

    def has_bulk_actions_selector_cols(self) -> bool:
        return self._memo("bulk_actions_selector_cols", super().has_bulk_actions_selector_cols)

    def has_backfill_id_column(self) -> bool:
        return self._memo("backfill_id_column", super().has_backfill_id_column)

    def has_bulk_action_job_name_column(self) -> bool:
        return self._memo("bulk_action_job_name_column", super().has_bulk_action_job_name_column)

    def has_backfill_tags_table(self) -> bool:
        return self._memo("backfill_tags_table", super().has_backfill_tags_table)


def _not_written(exc: BaseException) -> bool:
    """Whether a failed `store_event` left nothing behind: the connection could not be made, or the
    event's INSERT itself failed (the storage autocommits each statement). A failure after it (the
    NOTIFY, an asset event's index rows) means the event row is stored: trying again would store it twice."""
    if isinstance(exc, DagsterPostgresException):  # dagster-postgres gave up connecting
        return True
    statement = (getattr(exc, "statement", None) or "").lstrip().upper()
    return not statement or statement.startswith("INSERT INTO EVENT_LOGS")


class EventLogStorage(_Pooled, PostgresEventLogStorage):
    def store_event(self, event: Any) -> None:
        """Store the event; should Postgres be restarting, wait for it (up to `STORE_WAIT_S`). A run
        worker whose event could not be written died with its run (exit code 1): run monitoring then
        failed the run and Dagster retried it — five runs per Postgres kill in the chaos test."""
        through_restarts(
            lambda: super(EventLogStorage, self).store_event(event), wait_s=STORE_WAIT_S, every_s=STORE_RETRY_S,
            errors=(*OUTAGE_ERRORS, DagsterPostgresException), retryable=_not_written,
            on_retry=lambda exc: print(f"an event of run {event.run_id} waits for Postgres ({type(exc).__name__}); "
                                       f"trying again in {STORE_RETRY_S:.0f} s", file=sys.stderr, flush=True))

    def has_table(self, table_name: str) -> bool:
        return self._memo(f"table:{table_name}", lambda: super(EventLogStorage, self).has_table(table_name))

    def has_asset_key_col(self, column_name: str) -> bool:
        return self._memo(f"asset_key_col:{column_name}",
                          lambda: super(EventLogStorage, self).has_asset_key_col(column_name))


class ScheduleStorage(_Pooled, PostgresScheduleStorage):
    def _has_instigators_table(self, conn: Connection) -> bool:
        return self._memo("instigators_table", lambda: super(ScheduleStorage, self)._has_instigators_table(conn))

    def _has_asset_daemon_asset_evaluations_table(self, conn: Connection) -> bool:
        return self._memo("asset_daemon_asset_evaluations_table",
                          lambda: super(ScheduleStorage, self)._has_asset_daemon_asset_evaluations_table(conn))

    def has_secondary_index_table(self) -> bool:
        return self._memo("secondary_index_table", super().has_secondary_index_table)


def warm(instance: Any, *engines: Engine) -> None:
    """Ready an instance's storages (and any other `engines` a run uses) to be inherited by forked run
    workers (`constellation_dagster.zygote`): each engine meets its server once (SQLAlchemy initializes
    its dialect on an engine's first connection: server version, schema, type lookups) and the schema
    checks a run makes are answered (memoized here, or cached by Dagster), so no run worker asks again:
    about ten catalog queries per run fewer, and ~25 ms of CPU in a fresh process (within the noise of
    a run worker's total on this host). The connections are closed again: a child drops what it
    inherits anyway. Best effort: with Postgres away, each run worker asks for itself."""
    try:
        _warm(instance, engines)
    except (SQLAlchemyError, DagsterPostgresException) as exc:
        print(f"storages not warmed ({type(exc).__name__}): each run worker checks the schema itself",
              file=sys.stderr, flush=True)


def _warm(instance: Any, others: tuple[Engine, ...]) -> None:
    from dagster._core.storage.event_log.migration import ASSET_KEY_INDEX_COLS

    runs, events = instance.run_storage, instance.event_log_storage
    engines = [e for e in (getattr(s, "_engine", None) for s in (runs, events, instance.schedule_storage)) if e]
    engines += others
    for engine in engines:  # first: fails at once with Postgres away; the connection stays for the checks
        engine.connect().close()
    if isinstance(runs, RunStorage):
        for check in (runs.has_run_stats_index_cols, runs.has_backfill_id_column, runs.has_bulk_actions_selector_cols,
                      runs.has_bulk_action_job_name_column, runs.has_backfill_tags_table):
            check()
    if isinstance(events, EventLogStorage):
        events.has_asset_key_col("last_materialization_timestamp")
        events.has_asset_key_col("cached_status_data")
        events.has_secondary_index(ASSET_KEY_INDEX_COLS)
        events.supports_global_concurrency_limits  # noqa: B018 - a cached property
    for engine in engines:  # nothing left open for the children to inherit
        engine.dispose()

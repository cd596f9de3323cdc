"""Engines and migrations for the system of record."""

from __future__ import annotations

import os
import select
import time
import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from constellation_core.settings import REPO_ROOT, get_settings

ALEMBIC_INI = REPO_ROOT / "db" / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url or get_settings().sync_database_url), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()


# Every engine made here, so a forked child can drop the pooled connections it inherited.
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_inherited_connections() -> None:
    """In a forked child (the zygote's run workers, the planning pool): never use the parent's pooled
    connections — two processes on one socket corrupt both sessions, and after a Postgres restart the
    inherited ones are dead. `dispose(close=False)` forgets them without closing the parent's (the
    pattern SQLAlchemy documents for multiprocessing); the child opens its own."""
    for engine in list(_engines):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def forget_in_forked_children(engine: Engine) -> Engine:
    """Have a forked child drop the pooled connections of `engine` it inherited (as `sync_engine`'s)."""
    _engines.add(engine)
    return engine


# A pooled connection that sat idle at least this long is pinged before it is handed out (one whose
# server has hung up on it, at once).
PING_AFTER_IDLE_S = 1.0


def ping_if_in_doubt(engine: Engine, after_s: float = PING_AFTER_IDLE_S) -> Engine:
    """Replace a pooled connection that died (a Postgres or PgBouncer restart, an idle timeout)
    before it is handed out, without a round trip before every checkout.

    SQLAlchemy's `pool_pre_ping` pings on every checkout: a round trip before each statement of a
    run worker's burst of Dagster event writes, or of each API request. Here a connection is pinged
    only when its socket has something to read (an idle session is sent nothing: a server that
    ended it, or PgBouncer dropping it when its server connection crashed, sends an error and hangs
    up — seen at once, for the cost of a `select`), or when it sat idle for `after_s` or more (a
    peer gone without a word). The ping is SQLAlchemy's custom pessimistic check: a `checkout`
    listener that raises `DisconnectionError` makes the pool connect afresh."""

    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_in_doubt(dbapi_connection, record, proxy) -> None:
        idle_since = record.info.get("idle_since")  # (`info` is emptied when a connection is replaced)
        if idle_since is None:  # just connected
            return
        if time.monotonic() - idle_since < after_s and not _has_word_from_server(dbapi_connection):
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # noqa: BLE001 - any failure means: connect afresh
            raise DisconnectionError("a pooled connection died while idle") from exc
        if not alive:
            raise DisconnectionError("a pooled connection died while idle")

    return engine


def _has_word_from_server(dbapi_connection) -> bool:
    """Whether the connection's socket is readable (or cannot be checked): a pooled session is sent
    nothing while idle unless the server is ending it."""
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)  # (async adapters wrap it)
    try:
        readable, _, _ = select.select([driver.fileno()], [], [], 0)
    except (AttributeError, OSError, ValueError, TypeError):
        return True
    return bool(readable)


T = TypeVar("T")
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)


def through_restarts(call: Callable[[], T], *, wait_s: float, every_s: float,
                     errors: tuple[type[BaseException], ...] = OUTAGE_ERRORS,
                     retryable: Callable[[BaseException], bool] = lambda exc: True,
                     on_retry: Callable[[BaseException], None] | None = None) -> T:
    """`call()`, asked again every `every_s` while it fails because Postgres is out of reach (one of
    `errors` that `retryable` accepts: a restart), for up to `wait_s`; then its last error is raised."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return call()
        except errors as exc:
            if not retryable(exc) or time.monotonic() >= deadline:
                raise
            if on_retry is not None:
                on_retry(exc)
            time.sleep(every_s)


@lru_cache
def sync_engine(database_url: str | None = None) -> Engine:
    return forget_in_forked_children(ping_if_in_doubt(create_engine(database_url or get_settings().sync_database_url)))


def async_engine(database_url: str | None = None, **kwargs) -> AsyncEngine:
    """A pooled connection that the server ended (a Postgres restart) or that sat idle is pinged on
    checkout (`ping_if_in_doubt`), and replaced rather than handed to a request if it died."""
    engine = create_async_engine(database_url or get_settings().sync_database_url, **kwargs)
    forget_in_forked_children(ping_if_in_doubt(engine.sync_engine))
    return engine

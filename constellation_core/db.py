"""Engines and migrations for the system of record."""

from __future__ import annotations

import os
import weakref
from functools import lru_cache

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine
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


@lru_cache
def sync_engine(database_url: str | None = None) -> Engine:
    return forget_in_forked_children(create_engine(database_url or get_settings().sync_database_url,
                                                   pool_pre_ping=True))


def async_engine(database_url: str | None = None, **kwargs) -> AsyncEngine:
    """Pre-ping on checkout unless told otherwise: a connection that died with a Postgres restart is
    replaced rather than handed to a request."""
    engine = create_async_engine(database_url or get_settings().sync_database_url,
                                 **{"pool_pre_ping": True, **kwargs})
    _engines.add(engine.sync_engine)
    return engine

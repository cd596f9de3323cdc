"""Engines and migrations for the system of record."""

from __future__ import annotations

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


@lru_cache
def sync_engine(database_url: str | None = None) -> Engine:
    return create_engine(database_url or get_settings().sync_database_url, pool_pre_ping=True)


def async_engine(database_url: str | None = None, **kwargs) -> AsyncEngine:
    return create_async_engine(database_url or get_settings().sync_database_url, **kwargs)

"""Fixtures over the real services that `make test` starts (`constellation-dev with-services`)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from constellation_core.accounts import create_account, issue_api_key
from constellation_core.db import migrate
from constellation_devstack.postgres import PG_CREDENTIALS_ENV, with_login
from constellation_devstack.setup import libpq_url

ADMIN_URL_VAR = "CONSTELLATION_TEST_PG_ADMIN_URL"


def role_password(role: str) -> str | None:
    """A service role's password on the test server (`with-services` says where they are)."""
    path = os.environ.get(PG_CREDENTIALS_ENV)
    return json.loads(Path(path).read_text()).get(role) if path else None


def role_url(url: str, role: str) -> str:
    """`url` (on the test server) logging in as the service role `role`, as the stack's processes do."""
    password = role_password(role)
    return with_login(url, role, password) if password else url


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(
            f"{name} is not set: run the tests with `make test` (it starts Postgres+PostGIS and NATS), "
            "or `constellation-dev with-services -- pytest`",
            returncode=2,
        )
    return value


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return _require_env(ADMIN_URL_VAR)


@pytest.fixture(scope="session")
def nats_url() -> str:
    return _require_env("NATS_URL")


def fresh_database_url(admin_url: str, prefix: str, template: str | None = None) -> str:
    """A new database on the test server: empty, or a copy of `template`."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(admin_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template or "template1")))
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    with psycopg.connect(libpq_url(url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(make_url(url).database)))


@pytest.fixture(scope="session")
def migrated_template(pg_admin_url: str) -> Iterator[str]:
    """A database built by the real migrations, the template every test's database is copied from."""
    url = fresh_database_url(pg_admin_url, "constellation_template")
    migrate(url)
    yield make_url(url).database
    drop_database(url)


@pytest.fixture
def database_url(pg_admin_url: str, migrated_template: str) -> Iterator[str]:
    """This test's own `constellation` database: a copy of the migrated template, dropped after it.
    Tests never see, or trip over, each other's rows."""
    url = fresh_database_url(pg_admin_url, "constellation_test", migrated_template)
    yield url
    drop_database(url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@dataclass(frozen=True)
class AccountKey:
    id: uuid.UUID
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def make_account(engine: Engine):
    """Factory: a new account (role `member` unless told) with an API key."""

    def _make(role: str = "member") -> AccountKey:
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        with engine.begin() as conn:
            account_id = create_account(conn, name, role)
            key = issue_api_key(conn, account_id)
        return AccountKey(account_id, name, key)

    return _make



@pytest.fixture
def client(database_url, nats_url):
    """The API in-process (TestClient) on this test's database (as the API's own role) and NATS, at
    most 500 tiles per job."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from constellation_core.settings import Settings

    settings = Settings(database_url=role_url(database_url, "constellation_api"), nats_url=nats_url, CONSTELLATION_MAX_TILES_PER_JOB=500)
    with TestClient(create_app(settings)) as client:
        yield client

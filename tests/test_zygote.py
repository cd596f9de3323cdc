"""A run worker forked while Postgres restarts waits for it instead of dying before its run starts
(which left the run STARTING until Dagster's 120 s start timeout: seen in the chaos test)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from constellation_dagster import zygote


class RestartingStorage:
    """Stands in for a Dagster instance whose Postgres refuses the first `down` queries."""

    def __init__(self, down: int, error: Exception | None = None) -> None:
        self.down, self.asked = down, 0
        self.error = error or OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    def get_run_by_id(self, run_id: str) -> object:
        self.asked += 1
        if self.asked <= self.down:
            raise self.error
        return object()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(zygote, "STORAGE_RETRY_S", 0.01)


def test_a_new_run_worker_waits_out_a_postgres_restart(capsys):
    storage = RestartingStorage(down=3)
    zygote._wait_for_run_storage(storage, "run-1")
    assert storage.asked == 4
    assert capsys.readouterr().err.count("run worker of run-1: Postgres did not answer (Exception)") == 3


def test_it_gives_up_after_its_deadline(monkeypatch):
    monkeypatch.setattr(zygote, "STORAGE_WAIT_S", 0.05)
    with pytest.raises(OperationalError):
        zygote._wait_for_run_storage(RestartingStorage(down=10_000), "run-1")


def test_errors_that_are_not_an_outage_are_not_waited_on():
    storage = RestartingStorage(down=1, error=ProgrammingError("SELECT", {}, Exception("no such table")))
    with pytest.raises(ProgrammingError):
        zygote._wait_for_run_storage(storage, "run-1")
    assert storage.asked == 1

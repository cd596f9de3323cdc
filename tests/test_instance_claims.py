"""The device pools' slots are a true semaphore: claimers racing for a pool's one slot get it exactly
once (real Postgres, our event log storage as `infra/dagster/dagster.yaml` configures it)."""

from __future__ import annotations

import threading
import uuid

import pytest

from constellation_dagster.instance import PromptClaimEventLogStorage
from dagster._utils.concurrency import ConcurrencySlotStatus
from tests.conftest import fresh_database_url


@pytest.fixture(scope="module")
def storage(pg_admin_url):
    url = fresh_database_url(pg_admin_url, "dagster_claims").replace("+psycopg", "+psycopg2")
    storage = PromptClaimEventLogStorage(postgres_url=url, should_autocreate_tables=True)
    yield storage
    storage.dispose()


def test_simultaneous_claims_on_a_one_slot_pool_give_the_slot_to_exactly_one(storage):
    pool = f"device-{uuid.uuid4().hex[:8]}"
    storage.set_concurrency_slots(pool, 1)
    claimers = 8
    for _ in range(30):
        start = threading.Barrier(claimers)
        results: list[tuple[str, ConcurrencySlotStatus]] = []

        def claim() -> None:
            run_id = str(uuid.uuid4())
            start.wait()
            results.append((run_id, storage._claim_concurrency_slot(pool, run_id, "infer_on_sim0")))  # noqa: SLF001

        threads = [threading.Thread(target=claim) for _ in range(claimers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [run_id for run_id, status in results if status == ConcurrencySlotStatus.CLAIMED]
        assert len(winners) == 1, f"{len(winners)} claimers hold the one slot"
        assert storage.get_concurrency_info(pool).claimed_slots[0].run_id == winners[0]
        storage.free_concurrency_slots_for_run(winners[0])
        assert storage.get_concurrency_info(pool).active_slot_count == 0

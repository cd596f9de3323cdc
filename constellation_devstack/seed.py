"""The demo seed: an admin account with a dev API key, an area of interest, a few jobs.

Jobs are submitted through the running API, exactly as a user would, so the demo exercises the
real path. Seeding happens once; later `make demo` runs keep the data and re-print the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
from sqlalchemy import func, insert

from constellation_core.accounts import account_id_by_name, create_account, issue_api_key
from constellation_core.db import sync_engine
from constellation_core.settings import REPO_ROOT, Settings
from constellation_core.tables import areas

DEMO_ACCOUNT = "demo"
DEMO_AREA_FILE = REPO_ROOT / "db" / "seeds" / "demo_area.geojson"
DEMO_JOBS = [
    {"name": "Geneva lakeshore, zoom 13", "zoom": 13, "priority": 0},
    {"name": "Geneva lakeshore, zoom 14", "zoom": 14, "priority": 5},
    {"name": "Geneva lakeshore, zoom 15 (serial)", "zoom": 15, "priority": 0, "mode": "serial"},
]


def _write_key(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    os.chmod(path, 0o600)


def seed_demo(settings: Settings, key_file: Path, api_url: str) -> tuple[str, bool]:
    """Return (dev API key, whether the demo was seeded now). The API at `api_url` must be ready."""
    engine = sync_engine(settings.sync_database_url)
    with engine.begin() as conn:
        account_id = account_id_by_name(conn, DEMO_ACCOUNT)
        if account_id is not None:
            if key_file.exists():
                return key_file.read_text().strip(), False
            key = issue_api_key(conn, account_id)  # the plain key was lost with .local/: issue another
            _write_key(key_file, key)
            return key, False
        account_id = create_account(conn, DEMO_ACCOUNT, role="admin")
        key = issue_api_key(conn, account_id)
        feature = json.loads(DEMO_AREA_FILE.read_text())
        area_id = conn.execute(
            insert(areas)
            .values(
                account_id=account_id,
                name=feature["properties"]["name"],
                geom=func.ST_SetSRID(func.ST_GeomFromGeoJSON(json.dumps(feature["geometry"])), 4326),
            )
            .returning(areas.c.id)
        ).scalar_one()
    _write_key(key_file, key)
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        for job in DEMO_JOBS:
            client.post("/jobs", json={**job, "area_id": str(area_id)}).raise_for_status()
    return key, True



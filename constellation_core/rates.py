"""How fast each device has been: tiles per second of its time on batches, over the batches it finished
lately. Serial placement weighs the work ahead of a job on each device by it (a fleet's GPUs need not
be equally fast: different generations, a shared or throttled one), and `GET /gpus` shows it."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Connection, func, select

from constellation_core.tables import tile_chunks

# Long enough to hold many batches on a busy device, short enough to follow a device that slows down.
RATE_WINDOW_S = 120

# One row per device that finished a batch in the window: (uuid, tiles, seconds on batches), read
# through `tile_chunks_recent_idx`.
RECENT_BATCHES = (
    select(tile_chunks.c.device_uuid, func.sum(tile_chunks.c.tiles),
           func.sum(func.extract("epoch", tile_chunks.c.finished_at - tile_chunks.c.started_at)))
    .where(tile_chunks.c.state == "done", tile_chunks.c.finished_at > func.now() - timedelta(seconds=RATE_WINDOW_S))
    .group_by(tile_chunks.c.device_uuid)
)


def rates_of(rows) -> dict[str, float]:
    """Device uuid → tiles per second, from `RECENT_BATCHES`' rows."""
    return {uuid: float(tiles) / float(seconds) for uuid, tiles, seconds in rows if uuid and seconds and seconds > 0}


def device_rates(conn: Connection) -> dict[str, float]:
    """Device uuid → tiles per second of its time on batches over the last RATE_WINDOW_S (devices
    with no batch then are absent)."""
    return rates_of(conn.execute(RECENT_BATCHES).all())

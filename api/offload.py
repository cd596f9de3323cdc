"""Run a request's CPU work (geometry, tile planning) in worker threads, off the event loop.

The event loop serves every request, `/healthz` and the live stream: a request that computes on it
stalls them all. GEOS (shapely) releases the GIL while it works, and the planner's cost is bounded
before it starts (`constellation_core.tiles`), so two planning threads keep the API responsive while
one client sends the largest areas it may.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

# At most this many requests compute at once; the rest wait their turn (without holding the loop).
PLANNING_THREADS = 2
_limiter: anyio.CapacityLimiter | None = None


def _planning_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(PLANNING_THREADS)
    return _limiter


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a planning thread; exceptions propagate as raised."""
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=_planning_limiter())

"""Run a request's CPU work (geometry, tile planning) in worker processes, off the event loop.

The event loop serves every request, `/healthz` and the live stream: a request that computes on it
stalls them all, and so does one that computes in a thread of the same process (pure-Python parts hold
the GIL: with planning threads `/healthz` still had a p99 of ~190 ms under a hostile mix). The work
goes to a small process pool (`concurrent.futures`, spawned: the workers import only geometry code, and
die with the API even when it is SIGKILLed); the planner's cost is bounded before it starts
(`constellation_core.tiles`), so a pool of two keeps the API responsive while clients send the largest
areas they may. Functions and arguments cross by pickle: module-level functions, plain data in and
out; refusals come back as `api.planning.Refused` values, made problems here (`accepted`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute

from api.errors import InvalidInput, ServiceUnavailable
from api.planning import Refused

T = TypeVar("T")
log = logging.getLogger(__name__)

PLANNING_PROCESSES = 2
PLANNING_NICENESS = 10
PR_SET_PDEATHSIG = 1


def _worker_init() -> None:
    """In each planning process: end with the API, even when the API is killed outright (a pool worker
    waits on a queue whose writing end it holds itself, so it would never notice)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the API died before the line above ran
            os._exit(0)
    # Planning is bulk work: the API's event loop (every request, the stream) gets the CPU first.
    os.nice(PLANNING_NICENESS)
    import api.planning  # noqa: F401 - the first request finds the geometry code loaded


class PlanningPool:
    def __init__(self, processes: int = PLANNING_PROCESSES) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
            )

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker process; its exceptions propagate. A pool whose worker died (killed,
        out of memory) is replaced, and the request gets a 503 to retry."""
        self.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args))
        except BrokenProcessPool:
            log.warning("a planning worker died; starting a new pool")
            self.stop()
            raise ServiceUnavailable("the planning worker stopped while planning this area; retry") from None


def accepted(result: T | Refused, field: str) -> T:
    """A planning result, or a 422 problem naming `body.<field>` with the refusal's reason."""
    if isinstance(result, Refused):
        raise InvalidInput(result.message, errors=[{"loc": ["body", field], "msg": result.message,
                                                    "type": result.kind}])
    return result


# The API's pool (started on first use, stopped with the app).
planning_pool = PlanningPool()


# A JSON body larger than this is parsed in a planning process: `json.loads` of a megabyte of
# coordinates holds the event loop for ~30 ms here, unpickling its result a fraction of that.
OFFLOADED_JSON_BYTES = 64 * 1024

# The function the planning processes parse with (a module attribute, so a test can put a slower one in).
parse_in_worker = json.loads


class OffloadedJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = None
            if len(body) > OFFLOADED_JSON_BYTES:
                try:
                    self._json = await planning_pool.run(parse_in_worker, body)
                except ServiceUnavailable:  # the pool is being replaced: parse here rather than fail
                    pass
            if self._json is None:
                self._json = json.loads(body)
        return self._json


class OffloadedJSONRoute(APIRoute):
    """A route whose large JSON bodies are parsed off the event loop (FastAPI's custom request class
    pattern); parse errors are the same exceptions, so the same 4xx answers."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(OffloadedJSONRequest(request.scope, request.receive))

        return route_handler

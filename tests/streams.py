"""Reading a TestClient WebSocket with a deadline (its `receive_json` alone waits forever)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from constellation_core.waiting import Timeout

_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ws-reader")


def next_message(ws, *, what: str = "a stream message", timeout: float = 15.0, heartbeats: bool = False) -> dict:
    """The next message that is not a heartbeat (any, with `heartbeats`), or Timeout naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = _reader.submit(ws.receive_json).result(timeout=max(deadline - time.monotonic(), 0))
        except FutureTimeout:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}") from None
        if heartbeats or message.get("type") != "heartbeat":
            return message

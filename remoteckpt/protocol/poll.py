"""Polling the storage, the only channel workers of one save share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from ..options import IOOptions

MAX_POLL_INTERVAL = 1.0
"""Ceiling of the backoff: a worker that waits long still notices within a second, and a
thousand waiting workers still cost at most a thousand small requests a second."""


async def backoff_polls(options: IOOptions, deadline: float) -> AsyncIterator[None]:
    """Yield once at once, then after growing sleeps (from ``options.poll_interval``, x1.5, up
    to `MAX_POLL_INTERVAL`) until the monotonic `deadline`; the caller raises its own timeout
    error once the iteration ends."""
    delay = options.poll_interval
    while True:
        yield
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, MAX_POLL_INTERVAL)

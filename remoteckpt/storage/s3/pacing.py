"""How many requests one S3 client keeps in flight: additive increase, multiplicative decrease.

S3 answers ``503 SlowDown`` while it repartitions a prefix that suddenly takes more requests
than it is sized for (about 3,500 writes and 5,500 reads a second per partition).  Retrying
the same requests at the same rate prolongs it.  So each client paces itself:

    every `limit` successes  -> limit + 1            (up to `CEILING`)
    a SlowDown (or 503)      -> limit / 2            (at most once per `CUT_SPACING`; at least 1)

and botocore retries the throttled request with jittered exponential backoff under its retry
quota (``retries={"mode": "standard"}``: each retry spends tokens, each success refunds one).
When the quota is spent the SlowDown surfaces, translated (`storage.errors`) into an error
that says the store is throttling.  The direct GET path (`direct`) goes through the same gate.
"""

from __future__ import annotations

import asyncio
import collections
import time
from types import TracebackType

CEILING = 256
"""Requests in flight at most, per client: above what a save or restore asks for (parts in
flight, `IOOptions.max_concurrency`), so the gate only matters once the store has pushed back."""

START = 64
"""Where the limit starts: no brake in the common case."""

CUT_SPACING = 0.2
"""Seconds between two halvings: a burst of SlowDowns answering requests sent at the old rate
is one signal, not ten."""


class Pacer:
    """An adaptive gate for one client's requests: ``async with pacer:`` around each, then
    `succeeded()` for an answer the store served (a 503 answer is a `slow_down()`, not a
    success: counting it would raise the limit while the store pushes back)."""

    def __init__(self, *, start: int = START, ceiling: int = CEILING) -> None:
        self.limit = start
        self.ceiling = ceiling
        self.in_flight = 0
        self.slowdowns = 0
        self.lowest = start
        self._successes = 0
        self._last_cut = 0.0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> "Pacer":
        while self.in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake()  # pass the turn on
                raise
        self.in_flight += 1
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.in_flight -= 1
        self._wake()

    def succeeded(self) -> None:
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.ceiling:
            self.limit += 1
            self._successes = 0
            self._wake()

    def slow_down(self) -> None:
        """The store said SlowDown (or 503): halve the limit, once per burst."""
        self.slowdowns += 1
        now = time.monotonic()
        if now - self._last_cut >= CUT_SPACING:
            self._last_cut = now
            self.limit = max(1, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            self._successes = 0

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

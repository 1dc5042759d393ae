"""A byte-counting semaphore bounding the host memory held by buffers in flight, one per process.

What it bounds: the temporary buffers of saves and reads (a non-contiguous or big-endian
tensor converted a block at a time as it is written, or as an incremental save hashes it, a
partial read's temporary blocks, string payloads, a group read's staging buffers,
`remoteckpt cp`'s chunks).  Not the tensors being saved nor the arrays a
read returns: those are the caller's.

One budget per process: every save, read and copy of the process that runs with the same
`IOOptions.memory_budget` draws on one `MemoryBudget` (`process_budget`), so two concurrent
reads under the default 256 MiB hold 256 MiB between them, not 512.  Operations with another
`memory_budget` value share another budget of that size (the value names the budget).

Waiters are served in order: a request that does not fit waits, and so does every request
behind it, so a large request is not starved by a stream of small ones.  A request larger
than the whole budget is admitted alone, once nothing else is held: it still progresses.
Deadlock-free as long as no holder waits on the budget to release what it holds, which the
users keep: every buffer is released once its own I/O is done, whatever else is waiting.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class MemoryBudget:
    """`acquire(n)` waits until `n` more bytes fit under `capacity` (first come, first
    served); `release(n)` gives them back.  Bound to the event loop it is used on."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.capacity

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    async def acquire(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self._take(n)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release_now(n)  # granted, then cancelled before it could be used
            else:
                self._waiters.remove((n, waiter))
                self._grant()  # it may have been the head that held the others back
            raise

    def release_now(self, n: int) -> None:
        """`release`, callable from a callback on the budget's loop."""
        self.used -= n
        self._grant()

    async def release(self, n: int) -> None:
        self.release_now(n)

    def _grant(self) -> None:
        while self._waiters:
            n, waiter = self._waiters[0]
            if not self._fits(n):
                return
            self._waiters.popleft()
            self._take(n)
            waiter.set_result(None)

    @asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        await self.acquire(n)
        try:
            yield
        finally:
            self.release_now(n)


_budgets: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, MemoryBudget]]" = weakref.WeakKeyDictionary()


def process_budget(capacity: int) -> MemoryBudget:
    """The process's budget of `capacity` bytes on the running loop (remoteckpt runs all its
    I/O on one loop, `engine.loop`, so in practice one per `memory_budget` value)."""
    per_loop = _budgets.setdefault(asyncio.get_running_loop(), {})
    budget = per_loop.get(capacity)
    if budget is None:
        budget = per_loop[capacity] = MemoryBudget(capacity)
    return budget

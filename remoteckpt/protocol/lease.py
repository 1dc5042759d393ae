"""Leases: a claim stays ours while we keep renewing it, and is judged dead only by watching.

    holder                                   observer (another save, a worker, gc)
    ------                                   --------
    PUT claim  If-None-Match: *   -> etag0   GET claim -> etag0
    every lease_timeout / 4:                 HEAD claim every lease_timeout / 8:
      PUT claim (beat+1) If-Match: etagN       etag changed  -> alive
        -> etagN+1                             gone          -> free
      412: someone took it over: lost          unchanged for lease_timeout on the observer's
    DELETE claim If-Match: etagN (release)       monotonic clock -> dead: PUT If-Match: etag0

Liveness is never judged by comparing clocks: neither another host's wall clock nor the
store's ``LastModified``.  A save that runs for hours keeps its claim; a killed one loses it
one lease timeout after its last renewal; a paused one (SIGSTOP, a partition) that wakes after
being taken over finds its next renewal refused and stops before it commits (`Lease.check`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random

from ..errors import CheckpointChangedError, CheckpointError, SaveFailedError
from ..storage.base import Store
from . import poll
from .records import ClaimRecord

log = logging.getLogger("remoteckpt")

RENEWALS_PER_LEASE = 4
"""Renewals per lease timeout: three may fail (a slow or flaky store) before the lease can
be judged dead."""

WATCHES_PER_LEASE = 8
"""HEADs an observer sends per lease timeout while it watches a claim."""


class Lease:
    """The claim this save holds on its prefix; `start` renews it in the background until
    `release` (or `stop`)."""

    def __init__(self, store: Store, key: str, record: ClaimRecord, etag: str, timeout: float) -> None:
        self.store, self.key, self.record, self.etag, self.timeout = store, key, record, etag, timeout
        self.renewed_at = poll.clock()
        self.lost: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def attempt(self) -> str:
        return self.record.attempt

    async def renew(self) -> None:
        """Renew now; raises `SaveFailedError` if the claim is no longer ours."""
        async with self._lock:
            self.check()
            record = self.record.renewed()
            sent = poll.clock()
            try:
                self.etag = await self.store.put(self.key, record.encode(), if_match=self.etag)
            except CheckpointChangedError as exc:
                self.lost = exc
                self.check()
            self.record, self.renewed_at = record, sent

    def check(self) -> None:
        """Raise if the claim was taken over (this save must not commit)."""
        if self.lost is not None:
            raise SaveFailedError(
                f"{self.store.describe(self.key)}: this save's claim was taken over by another save (this one "
                f"was judged dead: it did not renew its claim for {self.timeout:g} s); it stopped before committing"
            ) from self.lost

    async def fresh(self) -> None:
        """Make sure the last renewal is recent (within a quarter of the timeout), renewing
        now if not: a commit follows within the time no observer can have judged us dead."""
        if poll.clock() - self.renewed_at > self.timeout / RENEWALS_PER_LEASE:
            await self.renew()
        self.check()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.timeout / RENEWALS_PER_LEASE)
                return  # stopped: never in the middle of a renewal
            except asyncio.TimeoutError:
                pass
            try:
                await self.renew()
            except SaveFailedError:
                log.warning("%s was taken over: this save will not commit", self.store.describe(self.key))
                return
            except CheckpointError as exc:  # a flaky store: the next renewal may get through
                log.warning("could not renew %s: %s", self.store.describe(self.key), exc)

    async def stop(self) -> None:
        """Stop renewing (a renewal under way completes first)."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            await asyncio.gather(task, return_exceptions=True)

    async def release(self) -> None:
        """Stop renewing and delete the claim if it is still ours."""
        await self.stop()
        async with self._lock:
            if self.lost is None:
                await self.store.delete(self.key, if_match=self.etag)


class Verdict(enum.Enum):
    ALIVE = "alive"
    GONE = "gone"
    DEAD = "dead"


async def watch(store: Store, key: str, etag: str, timeout: float) -> Verdict:
    """Watch the claim at `key`, last seen as version `etag`: ALIVE as soon as it changes,
    GONE if it disappears, DEAD once it has stayed `etag` for `timeout` seconds of this
    process's monotonic clock."""
    start = poll.clock()
    while True:
        await asyncio.sleep(timeout / WATCHES_PER_LEASE * random.uniform(0.75, 1.0))
        head = await store.head(key)
        if head is None:
            return Verdict.GONE
        if head.etag != etag:
            return Verdict.ALIVE
        if poll.clock() - start >= timeout:
            return Verdict.DEAD

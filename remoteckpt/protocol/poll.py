"""Polling the storage, the only channel the workers of one save share.

Waits back off exponentially with jitter, so that workers that started together do not
poll in lockstep, and a long wait costs requests that grow with the logarithm of its length,
not with its length: each sleep is drawn from [1/2, 1] of its nominal length, which doubles
from the first up to the cap, and beyond the cap keeps growing with the time already waited
(`WAIT_SHARE`).  The cap grows with the number of workers polling, so that all of them
together stay within a request budget (`interval_cap`).  Keys that every worker reads now and
then (the claim, the index) are looked at at times spread out over `spread` seconds.  Time
is judged on this process's monotonic clock only.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

MAX_POLL_INTERVAL = 1.0
"""Ceiling of the backoff for small jobs' short waits: a worker notices within a second or so."""

POLLS_PER_SECOND_PER_PREFIX = 2000.0
"""The whole job's polling budget on one key prefix: S3 serves about 5,500 GETs a second per
partitioned prefix, and the job's data and reports need the rest.  The cap of a wait grows
with the number of workers polling so that all of them together stay under it."""

WAIT_SHARE = 0.5
"""Beyond its cap, a wait's nominal sleep is at most this share of the time waited so far: a
wait of any length costs polls growing with its logarithm, and what it waits for is noticed
within half again the time waited (a quarter again on average, with the jitter)."""

KEY_RATE = 100.0
"""Requests per second the workers of one job together send, at most, to a key every one of
them reads now and then (the claim, the index): their looks are spread over
``world_size / KEY_RATE`` seconds."""

COMMIT_RATE = 4000.0
"""Workers per second of the coordinator's work between the last report and the verdict
(merging their tables, listing their data files, writing their notices), at best: a worker
looks for the verdict first ``world_size / COMMIT_RATE`` seconds after its report at the
soonest, not before it could be there."""

clock = time.monotonic
"""The time source of every wait and lease judgement (monotonic: a host's wall clock may be
off by hours, or jump)."""


def interval_cap(pollers: int) -> float:
    """The longest sleep between two polls of a short wait when `pollers` workers poll at once."""
    return max(MAX_POLL_INTERVAL, pollers / POLLS_PER_SECOND_PER_PREFIX)


def spread(pollers: int) -> float:
    """Seconds over which `pollers` workers spread their looks at a key they all read."""
    return pollers / KEY_RATE


async def backoff_polls(first: float, deadline: float, *, cap: float = MAX_POLL_INTERVAL,
                        factor: float = 2.0, share: float | None = None, at_once: bool = True) -> AsyncIterator[int]:
    """Yield 0 at once (or, not `at_once`, after a first sleep), then 1, 2, ... after sleeps
    growing from `first` by `factor` up to `cap` (with `share`, up to the larger of `cap` and
    that share of the time since the wait began), each drawn from [1/2, 1] of its nominal
    length (jitter), until the monotonic `deadline`; the caller raises its own timeout error
    once the iteration ends."""
    nominal = first
    count = 0
    start = clock()
    if not at_once:
        await asyncio.sleep(min(nominal * random.uniform(0.5, 1.0), max(0.0, deadline - start)))
        nominal = min(nominal * factor, cap)
    while True:
        yield count
        count += 1
        now = clock()
        if now >= deadline:
            return
        await asyncio.sleep(min(nominal * random.uniform(0.5, 1.0), max(0.0, deadline - now)))
        ceiling = cap if share is None else max(cap, share * (clock() - start))
        nominal = min(nominal * factor, ceiling)

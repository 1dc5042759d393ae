"""Polling the storage, the only channel the workers of one save share.

Waits back off exponentially with jitter, so that workers that started together do not
poll in lockstep, and a long wait costs requests that grow with the logarithm of its length
up to the cap, not with its length.  Time is judged on this process's monotonic clock only.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

MAX_POLL_INTERVAL = 1.0
"""Ceiling of the backoff for small jobs: a worker that waits long still notices within a
second or so."""

POLLS_PER_SECOND_PER_PREFIX = 2000.0
"""The whole job's polling budget on one key prefix: S3 serves about 5,500 GETs a second per
partitioned prefix, and the job's data and reports need the rest.  The cap of a wait grows
with the number of workers polling so that all of them together stay under it."""

clock = time.monotonic
"""The time source of every wait and lease judgement (monotonic: a host's wall clock may be
off by hours, or jump)."""


def interval_cap(pollers: int) -> float:
    """The longest sleep between two polls when `pollers` workers poll at once."""
    return max(MAX_POLL_INTERVAL, pollers / POLLS_PER_SECOND_PER_PREFIX)


async def backoff_polls(first: float, deadline: float, *, cap: float = MAX_POLL_INTERVAL,
                        factor: float = 2.0) -> AsyncIterator[int]:
    """Yield 0 at once, then 1, 2, ... after sleeps growing from `first` by `factor` up to
    `cap`, each drawn from [1/2, 1] of its nominal length (jitter), until the monotonic
    `deadline`; the caller raises its own timeout error once the iteration ends."""
    nominal = first
    count = 0
    while True:
        yield count
        count += 1
        now = clock()
        if now >= deadline:
            return
        await asyncio.sleep(min(nominal * random.uniform(0.5, 1.0), max(0.0, deadline - now)))
        nominal = min(nominal * factor, cap)

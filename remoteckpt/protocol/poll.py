"""Polling the storage, the only channel the workers of one save share.

Waits back off exponentially with jitter, so that workers that started together do not
poll in lockstep, and a long wait costs requests that grow with the logarithm of its length,
not with its length: each sleep is drawn from [1/2, 1] of its nominal length, which doubles
from the first up to the cap, and beyond the cap keeps growing with the time already waited
(`WAIT_SHARE`).  The cap grows with the number of workers polling, so that all of them
together stay within a request budget (`interval_cap`).  Keys that every worker reads now and
then (the claim, the index) are looked at at times spread out over `spread` seconds.  Time
is judged on this process's monotonic clock only.

A job saves again and again, in a rhythm: a worker's invitation comes about as long after it
called the save, and the verdict as long after it joined, as at the job's last saves (when
its own report lands in that time varies).  `Waits` remembers those times in the process, so
that the next wait of the kind sleeps through most of the expected time before its first
poll: a worker of a job in its rhythm finds what it waits for within a couple of polls,
whatever the world size and however long the save takes.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import AsyncIterator, Hashable

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

LEARNED_WAITS = 3
"""Waits of one kind remembered: the shortest of them is the expectation, so that one slow
save (a straggling worker) does not make the next ones look late."""

LEARNED_FIRST = 2
"""Waits of a kind seen before one is expected: a job's first save is often its slowest
(connections, caches, compilation), and one wait alone is no rhythm."""

LEARNED_SHARE = 0.7
"""Of the expected wait, the share slept before the first poll.  A remembered wait is the time
the answer was *seen*, up to 1.5x the time it took to come (`WAIT_SHARE`): 0.7 of that is at
most 1.05x, so a wait as long as the last ones is seen within a poll or two after its first,
and the expectation does not creep upward from save to save."""

clock = time.monotonic
"""The time source of every wait and lease judgement (monotonic: a host's wall clock may be
off by hours, or jump)."""


def interval_cap(pollers: int) -> float:
    """The longest sleep between two polls of a short wait when `pollers` workers poll at once."""
    return max(MAX_POLL_INTERVAL, pollers / POLLS_PER_SECOND_PER_PREFIX)


def spread(pollers: int) -> float:
    """Seconds over which `pollers` workers spread their looks at a key they all read."""
    return pollers / KEY_RATE


class Waits:
    """How long this process's last waits of each kind took (see the module docstring); a
    kind is any hashable naming the wait, the job and the worker."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, collections.deque[float]] = {}

    def expected(self, kind: Hashable) -> float | None:
        """The shortest of the last `LEARNED_WAITS` waits of `kind`, None until
        `LEARNED_FIRST` were seen."""
        seen = self._seen.get(kind)
        return min(seen) if seen is not None and len(seen) >= LEARNED_FIRST else None

    def not_before(self, kind: Hashable, begun: float) -> float | None:
        """When a wait of `kind` that began at monotonic `begun` should first look: after
        `LEARNED_SHARE` of the expected wait (None: no expectation yet)."""
        expected = self.expected(kind)
        return None if expected is None else begun + LEARNED_SHARE * expected

    def learn(self, kind: Hashable, seconds: float) -> None:
        seen = self._seen.get(kind)
        if seen is None:
            if len(self._seen) >= 4096:  # one entry per (wait, job, worker): bounded all the same
                self._seen.pop(next(iter(self._seen)))
            seen = self._seen[kind] = collections.deque(maxlen=LEARNED_WAITS)
        seen.append(seconds)


waits = Waits()
"""The process's memory of its waits (`Waits`)."""


async def backoff_polls(first: float, deadline: float, *, cap: float = MAX_POLL_INTERVAL,
                        factor: float = 2.0, share: float | None = None, at_once: bool = True,
                        not_before: float | None = None, since: float | None = None) -> AsyncIterator[int]:
    """Yield 0 at once (or, not `at_once`, after a first sleep), then 1, 2, ... after sleeps
    growing from `first` by `factor` up to `cap` (with `share`, up to the larger of `cap` and
    that share of the time waited: since the monotonic time `since`, by default since the
    call), each drawn from [1/2, 1] of its nominal length (jitter), until the monotonic
    `deadline`; the caller raises its own timeout error once the iteration ends.
    `not_before`: a monotonic time before which what is awaited is not expected (`Waits`);
    when later than the first poll would be, the first poll comes then (jittered by a tenth of
    the sleep, earlier), and the sleeps go on from the longest the rule above allows."""
    nominal = first
    count = 0
    start = clock()
    origin = start if since is None else since
    if not_before is not None and not_before - start > (0.0 if at_once else first):
        await asyncio.sleep(min((not_before - start) * random.uniform(0.9, 1.0), max(0.0, deadline - start)))
        nominal = cap if share is None else max(cap, share * (clock() - origin))
    elif not at_once:
        await asyncio.sleep(min(nominal * random.uniform(0.5, 1.0), max(0.0, deadline - start)))
        nominal = min(nominal * factor, cap)
    while True:
        yield count
        count += 1
        now = clock()
        if now >= deadline:
            return
        await asyncio.sleep(min(nominal * random.uniform(0.5, 1.0), max(0.0, deadline - now)))
        ceiling = cap if share is None else max(cap, share * (clock() - origin))
        nominal = min(nominal * factor, ceiling)
